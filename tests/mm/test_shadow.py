"""The shadow MMU as plain Python: guest tables in a GuestMemory, shadow tables in a
bytearray pool, #PF exits given by hand, and the shadow tables walked as the CPU
would walk them (``engine_walk``)."""
import struct

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm.cpu.state import CR0_PG, CR0_WP, CR4_PAE, EFER_LMA, EFER_LME, EFER_NXE
from pyvmm.errors import GuestFault
from pyvmm.mm.dirty_log import DirtyLog
from pyvmm.mm.memory import GuestMemory
from pyvmm.mm.pagewalk import PFEC_I, PFEC_P, PFEC_RSVD, PFEC_U, PFEC_W, Paging, translate
from pyvmm.mm.shadow import PTE_A, PTE_D, ShadowedCpu, ShadowMmu, ShadowUnsupported

MiB = 1 << 20
POOL_BASE = 0xFE_0010_0000
P, W, U, PS = 1, 2, 4, 0x80
NX = 1 << 63
ADDR = 0x000F_FFFF_FFFF_F000
CR0 = CR0_PG | CR0_WP | 1
EFER = EFER_LME | EFER_LMA | EFER_NXE


class Guest:
    """A guest's memory and 4-level tables, built with a bump allocator from 1 MiB."""

    def __init__(self, ram=8 * MiB, pool_pages=64):
        self.mem = GuestMemory(ram)
        self.next = 1 * MiB
        self.cr3 = self.table()
        self.mmu = ShadowMmu(bytearray(pool_pages * 4096), POOL_BASE, ram)
        self.engine_cr3 = self.mmu.load_cr3(self.cr3)

    def table(self):
        t = self.next
        self.next += 0x1000
        return t

    def paging(self):
        return Paging(CR0, self.cr3, CR4_PAE, EFER)

    def entry_addr(self, va, level, cr3=None):
        """Address of the level-``level`` entry for ``va`` (4 = PML4E), creating tables."""
        table = cr3 if cr3 is not None else self.cr3
        for lv in (4, 3, 2, 1):
            slot = table + ((va >> (12 + 9 * (lv - 1))) & 511) * 8
            if lv == level:
                return slot
            e = self.mem.read_u64(slot)
            if not e & P:
                e = self.table() | P | W | U
                self.mem.write_u64(slot, e)
            table = e & ADDR

    def map(self, va, gpa, flags=P | W | U, cr3=None):
        self.mem.write_u64(self.entry_addr(va, 1, cr3), gpa | flags)

    def fault(self, va, code=0):
        return self.mmu.on_page_fault(self.paging(), va, code, self.mem)

    def engine_walk(self, va):
        """What the CPU finds in the shadow tables: (leaf entry, combined W, U, NX) or None."""
        pool = self.mmu._pool
        table = self.engine_cr3 & ADDR
        w = u = True
        nx = False
        for shift in (39, 30, 21, 12):
            e = struct.unpack_from("<Q", pool, table - POOL_BASE + ((va >> shift) & 511) * 8)[0]
            if not e & P:
                return None
            assert not e & PS, "shadow tables use 4 KiB leaves only"
            w, u, nx = w and bool(e & W), u and bool(e & U), nx or bool(e & NX)
            if shift == 12:
                return e, w, u, nx
            table = e & ADDR
            assert POOL_BASE <= table < POOL_BASE + len(pool), "shadow tables live in the pool"


def test_read_fill_maps_the_guest_page_read_only_and_sets_accessed_only():
    g = Guest()
    g.map(0x40_0000, 0x30_0000)
    out = g.fault(0x40_0123, 0)
    assert out.kind == "filled"
    leaf, w, u, nx = g.engine_walk(0x40_0000)
    assert leaf & ADDR == 0x30_0000 and u and not nx
    assert not leaf & W, "the guest's dirty bit is clear: the first write must exit"
    pte = g.mem.read_u64(g.entry_addr(0x40_0000, 1))
    assert pte & PTE_A and not pte & PTE_D
    for level in (4, 3, 2):
        assert g.mem.read_u64(g.entry_addr(0x40_0000, level)) & PTE_A


def test_write_fault_sets_dirty_and_makes_the_leaf_writable():
    g = Guest()
    g.map(0x40_0000, 0x30_0000)
    g.fault(0x40_0000, 0)
    out = g.fault(0x40_0008, PFEC_P | PFEC_W)
    assert out.kind == "filled" and not out.flush
    assert g.engine_walk(0x40_0000)[0] & W
    assert g.mem.read_u64(g.entry_addr(0x40_0000, 1)) & PTE_D


def test_faults_the_guest_tables_explain_are_reflected_with_the_guests_error_code():
    g = Guest()
    g.map(0x40_0000, 0x30_0000, P | U)                     # read-only
    g.map(0x41_0000, 0x31_0000, P | W)                     # supervisor only
    out = g.fault(0x50_0000, PFEC_W)
    assert out.kind == "reflect" and out.fault.error_code == PFEC_W and out.fault.cr2 == 0x50_0000
    assert g.fault(0x40_0000, PFEC_W | PFEC_U).fault.error_code == PFEC_P | PFEC_W | PFEC_U
    assert g.fault(0x41_0000, PFEC_U).fault.error_code == PFEC_P | PFEC_U
    g.map(0x42_0000, 0x32_0000, P | W | U)
    g.mem.write_u64(g.entry_addr(0x42_0000, 1), 0x32_0000 | P | W | U | NX)
    assert g.fault(0x42_0000, PFEC_I).fault.error_code == PFEC_P | PFEC_I
    assert g.engine_walk(0x50_0000) is None and g.engine_walk(0x40_0000) is None


def test_reserved_bits_and_a_table_beyond_ram_fault_with_rsvd():
    g = Guest()
    g.map(0x40_0000, 0x30_0000 | (1 << 45))                # beyond MAXPHYADDR
    assert g.fault(0x40_0000, 0).fault.error_code == PFEC_P | PFEC_RSVD
    g.mem.write_u64(g.entry_addr(0x60_0000, 2), 0x4000_0000 | P | W | U)   # a PT past RAM
    assert g.fault(0x60_0000, 0).fault.error_code == PFEC_P | PFEC_RSVD


def test_memory_beyond_ram_reads_ones_and_swallows_writes():
    g = Guest()
    g.map(0x40_0000, 0x4000_0000)
    assert g.fault(0x40_0000, 0).kind == "filled"
    leaf = g.engine_walk(0x40_0000)[0]
    assert leaf & ADDR == g.mmu.ones_hpa and not leaf & W
    assert bytes(g.mmu._pool[:4096]) == b"\xff" * 4096
    out = g.fault(0x40_0000, PFEC_P | PFEC_W)
    assert out.kind == "step" and g.engine_walk(0x40_0000)[0] & ADDR == g.mmu.sink_hpa
    assert g.mmu.step_done()
    assert g.engine_walk(0x40_0000) is None, "after the step the write is forgotten"


def test_a_write_to_a_shadowed_page_table_zaps_what_was_derived_from_it():
    g = Guest()
    g.map(0x40_0000, 0x30_0000)
    pt = g.entry_addr(0x40_0000, 1) & ~0xFFF
    g.map(0x70_0000, pt)                                   # the guest maps its own PT as data
    g.fault(0x40_0000, 0)
    assert g.engine_walk(0x40_0000) is not None
    g.fault(0x70_0000, 0)
    assert not g.engine_walk(0x70_0000)[0] & W, "a page table is write-protected"
    out = g.fault(0x70_0000, PFEC_P | PFEC_W)
    assert out.kind == "filled" and out.flush
    assert g.mmu.stats["pt_writes"] == 1
    assert g.engine_walk(0x40_0000) is None, "the shadow derived from the written PT is gone"
    assert g.engine_walk(0x70_0000)[0] & W, "the PT stays writable while nothing is derived from it"
    g.mem.write_u64(pt + 8 * 0x0, 0x33_0000 | P | W | U)  # the guest's write, then an access
    out = g.fault(0x40_0000, 0)
    assert out.flush, "re-deriving from the PT write-protects it again"
    assert g.engine_walk(0x40_0000)[0] & ADDR == 0x33_0000
    assert not g.engine_walk(0x70_0000)[0] & W


def test_a_write_through_a_self_map_is_single_stepped():
    g = Guest()
    g.mem.write_u64(g.cr3 + 511 * 8, g.cr3 | P | W)       # PML4[511] -> the PML4 itself
    selfmap_pml4 = 0xFFFF_FFFF_FFFF_F000                   # PML4 seen through 4 self-map levels
    g.fault(selfmap_pml4, 0)
    out = g.fault(selfmap_pml4 + 8, PFEC_P | PFEC_W)
    assert out.kind == "step" and g.mmu.stepping
    assert g.engine_walk(selfmap_pml4)[0] & W
    assert g.mmu.step_done() and not g.mmu.stepping
    assert g.engine_walk(selfmap_pml4) is None


def test_roots_are_cached_per_address_space():
    g = Guest()
    g.map(0x40_0000, 0x30_0000)
    g.fault(0x40_0000, 0)
    first_root = g.engine_cr3
    other = g.table()
    g.mem.write_u64(other, g.mem.read_u64(g.cr3))          # share PML4[0]
    g.engine_cr3 = g.mmu.load_cr3(other)
    assert g.engine_cr3 != first_root and g.mmu.guest_cr3 == other
    assert g.engine_walk(0x40_0000) is None
    fills = g.mmu.stats["fills"]
    g.engine_cr3 = g.mmu.load_cr3(g.cr3)
    assert g.engine_cr3 == first_root and g.engine_walk(0x40_0000) is not None
    assert g.mmu.stats["fills"] == fills


def test_a_full_pool_drops_everything_and_carries_on():
    g = Guest(pool_pages=8)                                # 2 special + root + 5
    for i in range(6):
        g.map(i << 30, 0x30_0000 + i * 0x1000)             # each needs its own PDPT/PD/PT path
    for i in range(6):
        assert g.fault(i << 30, 0).kind == "filled"
        assert g.engine_walk(i << 30)[0] & ADDR == 0x30_0000 + i * 0x1000
    assert g.mmu.stats["pool_resets"] >= 1


def test_large_guest_pages_are_split_into_4k_shadow_leaves():
    g = Guest()
    g.mem.write_u64(g.entry_addr(0x20_0000, 2), 0x60_0000 | P | W | U | PS)
    g.fault(0x20_5123, PFEC_W)
    leaf, w, *_ = g.engine_walk(0x20_5000)
    assert leaf & ADDR == 0x60_5000 and leaf & W
    assert g.mem.read_u64(g.entry_addr(0x20_0000, 2)) & (PTE_A | PTE_D) == PTE_A | PTE_D


def test_dirty_log_marks_written_pages_and_rearms():
    g = Guest()
    g.map(0x40_0000, 0x30_0000)
    g.map(0x40_1000, 0x30_1000)
    g.mmu.start_dirty_log(DirtyLog(8 * MiB))
    g.fault(0x40_0000, PFEC_W)
    g.fault(0x40_1000, 0)
    bitmap, flush = g.mmu.read_dirty_log()
    pt_frame = g.entry_addr(0x40_0000, 1) >> 12
    pages = DirtyLog.pages_in(bitmap)
    assert 0x300 in pages and 0x301 not in pages and flush
    assert pt_frame in pages, "the accessed/dirty bits the VMM set are guest-visible writes"
    assert not g.engine_walk(0x40_0000)[0] & W, "re-armed: the next write exits again"
    g.fault(0x40_0000, PFEC_P | PFEC_W)
    assert DirtyLog.pages_in(g.mmu.read_dirty_log()[0]) == [0x300]


def test_invlpg_drops_the_leaf():
    g = Guest()
    g.map(0x40_0000, 0x30_0000)
    g.fault(0x40_0000, 0)
    assert g.mmu.invlpg(0x40_0000) is True
    assert g.engine_walk(0x40_0000) is None
    assert g.mmu.invlpg(0x40_0000) is False


class FakeEngine:
    def __init__(self):
        self.cr = {0: CR0, 3: 0, 4: CR4_PAE}
        self.efer = EFER
        self.flushes = 0

    def get_cr(self, n):
        return self.cr[n]

    def set_cr(self, n, value):
        self.cr[n] = value

    def system_registers(self):
        return self.cr[0], 0, self.cr[3], self.cr[4], self.efer, 0

    def flush_tlb(self, address=None):
        self.flushes += 1


def test_the_guest_sees_its_own_cr3_and_mode_changes_drop_the_shadow():
    g = Guest()
    engine = FakeEngine()
    cpu = ShadowedCpu(engine, g.mmu)
    cpu.set_cr(3, g.cr3)
    assert cpu.get_cr(3) == g.cr3 and cpu.system_registers()[2] == g.cr3
    assert engine.cr[3] == g.mmu.root.hpa
    g.map(0x40_0000, 0x30_0000)
    g.engine_cr3 = engine.cr[3]
    g.fault(0x40_0000, 0)
    cpu.set_cr(4, CR4_PAE | (1 << 20))                      # SMEP on
    assert g.engine_walk(0x40_0000) is None and g.mmu.stats["resets"] == 1
    with pytest.raises(ShadowUnsupported, match="CR0.WP"):
        cpu.set_cr(0, CR0 & ~CR0_WP)
    with pytest.raises(ShadowUnsupported, match="paging off"):
        cpu.set_cr(0, CR0 & ~CR0_PG)


# ---- random guest tables: the shadow agrees with the guest's own walk ----
_flags = st.sampled_from([P, P | W, P | U, P | W | U, P | W | U | NX, 0, P | W | U | (1 << 44)])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 3), _flags, st.integers(0, 15)), min_size=1, max_size=20),
       st.lists(st.tuples(st.integers(0, 7), st.integers(0, 3), st.sampled_from([0, PFEC_W, PFEC_U, PFEC_U | PFEC_W,
                                                                                PFEC_I])), min_size=1, max_size=30))
def test_shadow_translations_match_the_guest_walk(mappings, accesses):
    """Every access either fills a leaf whose frame and permissions allow exactly what
    the guest's tables allow, or is reflected with the error code the walk gives."""
    g = Guest()
    vas = [(hi << 30) | (mid << 21) for hi in range(8) for mid in range(4)]
    for hi, mid, flags, frame in mappings:
        va = (hi << 30) | (mid << 21)
        g.map(va, 0x30_0000 + frame * 0x1000, flags)
    for hi, mid, code in accesses:
        va = (hi << 30) | (mid << 21)
        assert va in vas
        write, user, fetch = bool(code & PFEC_W), bool(code & PFEC_U), bool(code & PFEC_I)
        try:
            expect = translate(g.mem, g.paging(), va, write=write, user=user, fetch=fetch)
        except GuestFault as f:
            expect = f
        out = g.fault(va, code)
        if isinstance(expect, GuestFault):
            assert out.kind == "reflect" and out.fault.error_code == expect.error_code
            continue
        assert out.kind == "filled"
        leaf, w, u, nx = g.engine_walk(va)
        assert leaf & ADDR == expect & ADDR
        assert (not write or w) and (not user or u) and (not fetch or not nx), "the access now succeeds"
        assert not (leaf & W) or g.mem.read_u64(g.entry_addr(va, 1)) & PTE_D
