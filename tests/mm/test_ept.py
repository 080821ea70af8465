"""The EPT-style table and MMU: mappings, permissions, the violation policy, the dirty log.

Plain Python objects (no guest): the table is written into a bytearray pool and
checked through lookup() and through the raw entries the CPU walks.
"""
import struct

import pytest

from pyvmm.mm import ept
from pyvmm.mm.dirty_log import DirtyLog
from pyvmm.mm.ept import R, W, X, EptMisconfig, EptMmu, EptPoolExhausted, EptTable

MiB = 1 << 20
POOL_BASE = 0xFE_0010_0000


def table(ram=64 * MiB):
    return EptTable(bytearray(EptTable.pool_pages_for(ram) * 4096), POOL_BASE)


def raw_entry(t, gpa):
    """Walk the pool by hand as the CPU does; returns the leaf entry."""
    pool = t._pool
    entry_at = lambda hpa: struct.unpack_from("<Q", pool, hpa - POOL_BASE)[0]
    tab = t.root
    for shift in (39, 30, 21, 12):
        e = entry_at(tab + ((gpa >> shift) & 511) * 8)
        if shift == 21 and e & 0x80 or not e & 1:
            return e
        tab = e & 0x000F_FFFF_FFFF_F000
    return e


def test_identity_map_uses_large_pages_and_npt_format():
    t = table()
    assert t.map(0, 64 * MiB, R | W) is False
    assert t.lookup(0x123456) == (0x123456, R | W, 2 * MiB)
    e = raw_entry(t, 0x123456)
    assert e & 0x87 == 0x87 and e >> 63 == 1          # P, RW, US, PS; NX (no execute)
    assert t.lookup(64 * MiB) is None
    assert t.pages_used == 3                          # PML4, PDPT, one PD


def test_changing_one_page_splits_a_large_page_and_keeps_the_rest():
    t = table()
    t.map(0, 64 * MiB, R | W)
    t.change(0x201000, 0x1000, add=X)
    assert t.splits == 1
    assert t.lookup(0x201abc) == (0x201abc, R | W | X, 0x1000)
    assert t.lookup(0x200000)[1:] == (R | W, 0x1000)
    assert t.lookup(0x3ff000)[1:] == (R | W, 0x1000)
    assert raw_entry(t, 0x201000) >> 63 == 0


def test_taking_permissions_away_asks_for_a_tlb_flush():
    t = table()
    t.map(0, 4 * MiB, R | W | X)
    assert t.change(0, 4 * MiB, add=X) is False
    assert t.change(0, 4 * MiB, remove=W) is True
    assert t.perms(0x1000) == R | X
    assert t.unmap(0x200000, 0x1000) is True and t.lookup(0x200000) is None
    assert t.protect(0x200000, 0x2000, R) is True     # only the mapped page changes
    assert t.lookup(0x200000) is None and t.perms(0x201000) == R


def test_misconfigurations_are_refused_before_anything_changes():
    t = table()
    t.map(0, 2 * MiB, R | W)
    for perms in (W, X, W | X):
        with pytest.raises(EptMisconfig):
            t.protect(0, 0x1000, perms)
    with pytest.raises(EptMisconfig):
        t.change(0, 0x1000, remove=R)
    assert t.perms(0) == R | W
    with pytest.raises(ValueError):
        t.map(0x800, 0x1000, R)


def test_pool_exhaustion_is_an_error_not_a_crash():
    t = EptTable(bytearray(4 * 4096), POOL_BASE)
    t.map(0, 2 * MiB, R)
    with pytest.raises(EptPoolExhausted):
        t.map(1 << 40, 0x1000, R)


def test_qualification_and_npf_decoding():
    assert ept.access_of_npf(ept.NPF_FETCH | ept.NPF_PRESENT | ept.NPF_USER) == (ept.QUAL_FETCH, True)
    assert ept.access_of_npf(ept.NPF_WRITE)[0] == ept.QUAL_WRITE
    assert ept.access_of_npf(0)[0] == ept.QUAL_READ
    assert ept.qualification(ept.QUAL_WRITE, R | X) == 0b101010


def test_mmu_leaves_violations_it_did_not_cause_to_the_handler():
    t = table()
    mmu = EptMmu(t, 64 * MiB)
    assert t.perms(0x500000) == R | W | X
    assert mmu.on_violation(0x500123, ept.QUAL_WRITE, R | X) is None   # no dirty log running
    t.unmap(0x600000, 0x1000)                                           # e.g. ballooned out
    assert mmu.on_violation(0x600000, ept.QUAL_READ, 0) is None
    assert mmu.on_violation(1 << 48, ept.QUAL_READ, 0) is None          # beyond what the table maps


def page_bytes(t, gpa):
    hpa = t.lookup(gpa)[0] & ~0xFFF
    return bytes(t._pool[hpa - POOL_BASE:hpa - POOL_BASE + 4096])


def test_beyond_ram_reads_all_ones_and_writes_are_stepped_into_a_scratch_page():
    t = table()
    mmu = EptMmu(t, 64 * MiB)
    far = 0x7_1234_5000
    assert "all ones" in mmu.on_violation(far + 0x18, ept.QUAL_READ, 0)
    hpa, perms, size = t.lookup(far)
    assert perms == R | X and size == 4096 and POOL_BASE <= hpa < POOL_BASE + len(t._pool)
    assert page_bytes(t, far) == b"\xff" * 4096 and raw_entry(t, far) & (1 << 63) == 0   # never NX
    assert not mmu.stepping
    assert "single-stepped" in mmu.on_violation(far, ept.QUAL_WRITE, R | X)
    assert mmu.stepping and t.perms(far) == R | W | X and t.lookup(far)[0] != hpa
    scratch = t.lookup(far)[0]
    t._pool[scratch - POOL_BASE] = 0x12                                  # the stepped write lands here
    assert mmu.step_done() and not mmu.stepping and not mmu.step_done()
    assert t.lookup(far)[:2] == (hpa, R | X) and page_bytes(t, far) == b"\xff" * 4096
    assert mmu.beyond_ram == dict(mapped=1, writes_dropped=1, recycled=0)
    # RAM is untouched by all this
    assert t.lookup(0x1000)[:2] == (0x1000, R | W | X)


def test_beyond_ram_pages_are_recycled_when_their_pool_share_runs_out():
    t = table(8 * MiB)
    mmu = EptMmu(t, 8 * MiB)
    used = t.pages_used
    for i in range(ept.HOST_MAP_PAGES * 2):                  # each in its own 512 GiB: 3 tables apiece
        assert mmu.on_violation((i + 1) << 39, ept.QUAL_READ, 0)
    assert mmu.beyond_ram["recycled"] >= 1
    assert t.perms(((ept.HOST_MAP_PAGES * 2) << 39)) == R | X          # the latest is mapped
    assert t.perms(1 << 39) == 0                                          # an early one was given back
    assert t.lookup(0x7ff000)[:2] == (0x7ff000, R | W | X)
    t.drop_host_maps()
    assert t.pages_used == used + 1                                       # only the all-ones page stays


def test_mmu_dirty_log_marks_each_written_page_once_per_round():
    t = table()
    mmu = EptMmu(t, 8 * MiB)
    log = DirtyLog(8 * MiB)
    assert mmu.start_dirty_log(log) is True
    assert t.perms(0x3000) == R | X
    assert "logged" in mmu.on_violation(0x3008, ept.QUAL_WRITE, t.perms(0x3008))
    assert mmu.on_violation(0x7ff000, ept.QUAL_WRITE, t.perms(0x7ff000)) is not None
    assert t.perms(0x3000) == R | W | X
    bitmap, flush = mmu.read_dirty_log()
    assert flush and DirtyLog.pages_in(bitmap) == [3, 0x7ff]
    assert t.perms(0x3000) == R | X                                # re-armed
    assert DirtyLog.pages_in(mmu.read_dirty_log()[0]) == []
    mmu.stop_dirty_log()
    assert t.perms(0x3000) == R | W | X


def test_dirty_log_ignores_pages_outside_ram():
    log = DirtyLog(0x3000)
    log.mark(0x5000)
    log.mark(0x2fff)
    assert DirtyLog.pages_in(log.read_and_clear()) == [2] and not log.is_dirty(0x2000)
