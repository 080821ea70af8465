"""The MMU modes seen from a running guest: the page-table guest gives the same
output with the EPT-style table and without it; with EPT, CR3 loads and INVLPG
stop exiting; the dirty log catches every page the guest changed."""

import pytest

from pyvmm.cpu.exits import ExitReason as R
from pyvmm.mm.dirty_log import DirtyLog


def _pgtable(boot, mmu, **kw):
    status, reason, text, m = boot("pgtable", mmu=mmu, memory="32M", cmdline="skip=beyond_ram iters=3000", **kw)
    assert status == 0, reason
    return text, m


def test_pgtable_output_is_identical_in_every_mmu_mode(boot):
    ept_text, ept = _pgtable(boot, "ept")
    shadow_text, shadow = _pgtable(boot, "shadow")
    direct_text, direct = _pgtable(boot, "direct")
    assert "pgtable: checksum 0x" in ept_text and "FAIL" not in ept_text
    assert ept_text == direct_text == shadow_text
    assert ept.vcpu.stats.count.get(R.CR_ACCESS, 0) < 10 and R.INVLPG not in ept.vcpu.stats.count
    assert direct.vcpu.stats.count[R.INVLPG] > 100 and direct.vcpu.stats.count[R.CR_ACCESS] > 100
    # shadow: CR3 loads and INVLPG exit, and so do #PF (fills, the guest's own faults
    # reflected) and writes to the guest's page tables
    counts = shadow.vcpu.stats.count
    assert counts[R.INVLPG] == direct.vcpu.stats.count[R.INVLPG]
    stats = shadow.mmu.stats
    assert stats["fills"] > 1000 and stats["pt_writes"] > 100 and stats["reflected"] > 100
    assert R.EXCEPTION_NMI not in ept.vcpu.stats.count and counts[R.EXCEPTION_NMI] > 1000
    assert sum(counts.values()) >= 2 * sum(ept.vcpu.stats.count.values())


def test_shadow_mode_needs_paging_from_the_start(guest):
    from pyvmm.errors import ConfigError
    from pyvmm.machine import Machine, VmConfig
    with pytest.raises(ConfigError, match="shadow paging needs 4-level paging"):
        Machine(VmConfig(kernel=guest("hello32"), mmu="shadow", console=lambda data: None))


@pytest.mark.parametrize("mmu", ["ept", "shadow"])
def test_dirty_log_covers_every_page_the_guest_changed(guest, mmu):
    from pyvmm.machine import Machine, VmConfig
    m = Machine(VmConfig(kernel=guest("pgtable"), memory="32M", cmdline="skip=beyond_ram iters=3000",
                         console=lambda data: None, mmu=mmu))
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
