"""The MMU modes seen from a running guest: the page-table guest gives the same
output with the EPT-style table and without it; with EPT, CR3 loads and INVLPG
stop exiting; the dirty log catches every page the guest changed."""

from pyvmm.cpu.exits import ExitReason as R
from pyvmm.mm.dirty_log import DirtyLog


def _pgtable(boot, mmu, **kw):
    status, reason, text, m = boot("pgtable", mmu=mmu, memory="32M", cmdline="skip=beyond_ram iters=3000", **kw)
    assert status == 0, reason
    return text, m


def test_pgtable_output_is_identical_with_and_without_ept(boot):
    ept_text, ept = _pgtable(boot, "ept")
    direct_text, direct = _pgtable(boot, "direct")
    assert "pgtable: checksum 0x" in ept_text and "FAIL" not in ept_text
    assert ept_text == direct_text
    assert ept.vcpu.stats.count.get(R.CR_ACCESS, 0) < 10 and R.INVLPG not in ept.vcpu.stats.count
    assert direct.vcpu.stats.count[R.INVLPG] > 100 and direct.vcpu.stats.count[R.CR_ACCESS] > 100


def test_dirty_log_covers_every_page_the_guest_changed(guest):
    from pyvmm.machine import Machine, VmConfig
    m = Machine(VmConfig(kernel=guest("pgtable"), memory="32M", cmdline="skip=beyond_ram iters=3000",
                         console=lambda data: None))
    before = m.memory.read(0, m.memory.size)
    m.start_dirty_log()
    status, reason = m.run()
    assert status == 0, reason
    after = m.memory.read(0, m.memory.size)
    changed = {n for n in range(m.memory.size >> 12) if before[n << 12:(n + 1) << 12] != after[n << 12:(n + 1) << 12]}
    logged = set(DirtyLog.pages_in(m.read_dirty_log()))
    assert changed and changed <= logged
    # Pages are logged when written, even if the final content equals the first;
    # never pages the guest did not write (its code pages, unused RAM).
    assert len(logged) < m.memory.size >> 13
    assert DirtyLog.pages_in(m.read_dirty_log()) == []      # read clears
    m.close()
