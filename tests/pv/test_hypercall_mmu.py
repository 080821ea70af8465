"""PV page-table hypercalls: mmu_update, update_va_mapping, mmuext_op and page types.

A guest builds a 4-level tree in its own frames (L4 0x300 -> L3 0x301 -> L2 0x302 ->
L1 0x303 -> data 0x310 at VA), pins it, and then tries good and hostile updates.
"""

import pytest

from pyvmm.pv import abi
from pyvmm.pv.hypercall import (HYPERVISOR_mmu_update as MMU_UPDATE, HYPERVISOR_mmuext_op as MMUEXT,
                                HYPERVISOR_update_va_mapping as UPDATE_VA)
from pyvmm.pv.pv_mmu import L1, L2, L3, L4, WRITABLE, mmu_of

from .hypercall_vm import PAGE, PTE, PTE_RO, FakeVcpu, build_tables, hypercall
from .pvworld import SCRATCH, world

L4G, L3G, L2G, L1G, DATA = 0x300, 0x301, 0x302, 0x303, 0x310
VA = 0x4000_0000
REQS = SCRATCH + 0x1000
PDONE = SCRATCH
EBUSY, EINVAL, EPERM, EFAULT, ENOSYS = (-abi.EBUSY, -abi.EINVAL, -abi.EPERM, -abi.EFAULT,
                                        -abi.ENOSYS)


@pytest.fixture
def w():
    table, dom0, (g1, g2) = world()
    a, b = FakeVcpu(g1, table), FakeVcpu(g2, table)
    build_tables(g1, L4G, L3G, L2G, L1G, VA, DATA)
    return a, b


def slot(gfn, index):
    return gfn * PAGE + index * 8


def mmu_update(vm, reqs, pdone=PDONE, foreigndom=abi.DOMID_SELF, count=None):
    vm.domain.memory.write_u32(PDONE, 0xFFFF)
    vm.domain.memory.write(REQS, b"".join(abi.mmu_update.pack(ptr=p, val=v) for p, v in reqs))
    rc = hypercall(vm, MMU_UPDATE, REQS, len(reqs) if count is None else count, pdone, foreigndom)
    return rc, vm.domain.memory.read_u32(PDONE)


def mmuext(vm, ops, pdone=PDONE, foreigndom=abi.DOMID_SELF, count=None):
    vm.domain.memory.write_u32(PDONE, 0xFFFF)
    vm.domain.memory.write(REQS, b"".join(abi.mmuext_op.pack(**op) for op in ops))
    rc = hypercall(vm, MMUEXT, REQS, len(ops) if count is None else count, pdone, foreigndom)
    return rc, vm.domain.memory.read_u32(PDONE)


def op(cmd, mfn=0, linear_addr=None, **arg2):
    return {"cmd": cmd, "arg1": {"linear_addr": mfn if linear_addr is None else linear_addr},
            "arg2": arg2 or {"nr_ents": 0}}


def pin_tree(vm):
    assert mmuext(vm, [op(abi.MMUEXT_PIN_L4_TABLE, L4G)]) == (0, 1)


def test_pinning_an_l4_validates_the_tree_and_types_every_frame(w):
    a, _ = w
    pin_tree(a)
    mmu = mmu_of(a.domain)
    assert [mmu.type_of(g) for g in (L4G, L3G, L2G, L1G, DATA)] == [
        (L4, 1), (L3, 1), (L2, 1), (L1, 1), (WRITABLE, 1)]
    assert mmu.table_frames() == [L4G, L3G, L2G, L1G] and mmu.is_pinned(L4G)
    assert mmuext(a, [op(abi.MMUEXT_UNPIN_TABLE, L4G)]) == (0, 1)
    assert [mmu.type_of(g) for g in (L4G, L3G, L2G, L1G, DATA)] == [(None, 0)] * 5


def test_a_page_table_can_be_mapped_read_only_but_never_writable(w):
    a, _ = w
    pin_tree(a)
    assert mmu_update(a, [(slot(L1G, 1), L3G * PAGE | PTE)]) == (EBUSY, 0)
    assert a.domain.memory.read_u64(slot(L1G, 1)) == 0
    assert mmu_update(a, [(slot(L1G, 1), L3G * PAGE | PTE_RO)]) == (0, 1)
    assert a.domain.memory.read_u64(slot(L1G, 1)) == L3G * PAGE | PTE_RO
    # and a frame mapped writable can never become a page table
    assert mmuext(a, [op(abi.MMUEXT_PIN_L1_TABLE, DATA)]) == (EINVAL, 0)


def test_a_batch_of_updates_is_checked_entry_by_entry_and_stops_at_the_bad_one(w):
    a, _ = w
    pin_tree(a)
    reqs = [(slot(L1G, i), (0x320 + i) * PAGE | PTE) for i in range(1, 9)]
    reqs[5] = (slot(L1G, 6), 0x5000 * PAGE | PTE)              # outside the guest's RAM
    assert mmu_update(a, reqs) == (EPERM, 5)
    mem = a.domain.memory
    assert [mem.read_u64(slot(L1G, i)) for i in range(1, 9)] == \
        [(0x320 + i) * PAGE | PTE for i in range(1, 6)] + [0, 0, 0]
    assert mmu_of(a.domain).type_of(0x321) == (WRITABLE, 1)


def test_replacing_and_clearing_entries_moves_the_references(w):
    a, _ = w
    pin_tree(a)
    mmu = mmu_of(a.domain)
    idx = (VA >> 12) & 511
    assert mmu_update(a, [(slot(L1G, idx), 0x311 * PAGE | PTE)]) == (0, 1)
    assert mmu.type_of(DATA) == (None, 0) and mmu.type_of(0x311) == (WRITABLE, 1)
    assert mmu_update(a, [(slot(L1G, idx), 0)]) == (0, 1)
    assert not mmu.busy(0x311)
    # an L2 slot pointing at a fresh L1 validates it on the spot
    a.domain.memory.fill(0x304 * PAGE, PAGE)
    assert mmu_update(a, [(slot(L2G, 7), 0x304 * PAGE | PTE)]) == (0, 1)
    assert mmu.type_of(0x304) == (L1, 1)
    assert mmu_update(a, [(slot(L2G, 7), 0)]) == (0, 1)
    assert mmu.type_of(0x304) == (None, 0)


@pytest.mark.parametrize("ptr,val,rc", [
    (slot(L1G, 1), 0x3FF * PAGE | PTE | 1 << 45, EINVAL),     # reserved address bits
    (slot(L1G, 1), 0x3FF * PAGE | PTE | 1 << 55, EINVAL),     # bits kept for the hypervisor
    (slot(L1G, 1), 0x3FF * PAGE | PTE | 0x10, EINVAL),        # PCD: no uncached memory
    (slot(L2G, 1), 0x200 * PAGE | PTE | 0x80, EINVAL),        # PS: no superpages
    (slot(L2G, 1), DATA * PAGE | PTE, EINVAL),                # a writable data page as an L1
    (slot(L4G, 1), L4G * PAGE | PTE, EINVAL),                 # a table pointing at itself
    (slot(L1G, 1), 0x1_0000 * PAGE | PTE, EPERM),             # beyond RAM (another domain's?)
    (0x1_0000 * PAGE, 0, EINVAL),                              # pointer outside the guest's frames
    (slot(L1G, 1) | 5, 0, ENOSYS),                             # no such mmu_update command
])
def test_hostile_entries_get_xen_codes_and_change_nothing(w, ptr, val, rc):
    a, b = w
    pin_tree(a)
    before = bytes(a.domain.memory.view[L4G * PAGE:(L1G + 1) * PAGE])
    counts = {g: mmu_of(a.domain).type_of(g) for g in (L4G, L3G, L2G, L1G, DATA)}
    assert mmu_update(a, [(ptr, val)]) == (rc, 0)
    assert bytes(a.domain.memory.view[L4G * PAGE:(L1G + 1) * PAGE]) == before
    assert counts == {g: mmu_of(a.domain).type_of(g) for g in counts}
    build_tables(b.domain, L4G, L3G, L2G, L1G, VA, DATA)          # the other guest carries on
    assert mmuext(b, [op(abi.MMUEXT_PIN_L4_TABLE, L4G)]) == (0, 1)


def test_a_ballooned_out_frame_cannot_be_mapped(w):
    a, _ = w
    pin_tree(a)
    a.domain.release(0x3F0)
    assert mmu_update(a, [(slot(L1G, 1), 0x3F0 * PAGE | PTE_RO)]) == (EBUSY, 0)
    assert mmuext(a, [op(abi.MMUEXT_PIN_L1_TABLE, 0x3F0)]) == (EINVAL, 0)


def test_a_granted_frame_maps_only_as_the_grant_allows(w):
    a, b = w
    b.domain.on_foreign_map = lambda mapping: None
    a.domain.grant_table.grant_access(10, 2, 0x3A0, readonly=True)
    a.domain.grant_table.grant_access(11, 2, 0x3A1)
    b.domain.grant_table.map_grant_ref(abi.GNTMAP_host_map | abi.GNTMAP_readonly, 10, 1,
                                       0x220 * PAGE)
    b.domain.grant_table.map_grant_ref(abi.GNTMAP_host_map, 11, 1, 0x221 * PAGE)
    build_tables(b.domain, L4G, L3G, L2G, L1G, VA, DATA)
    assert mmuext(b, [op(abi.MMUEXT_PIN_L4_TABLE, L4G)]) == (0, 1)
    assert mmu_update(b, [(slot(L1G, 1), 0x220 * PAGE | PTE)]) == (EBUSY, 0)
    assert mmu_update(b, [(slot(L1G, 1), 0x220 * PAGE | PTE_RO),
                          (slot(L1G, 2), 0x221 * PAGE | PTE)]) == (0, 2)
    assert mmu_update(b, [(0x220 * PAGE, 0)]) == (EINVAL, 0)      # no page table in a grant


def test_preserve_ad_keeps_the_accessed_and_dirty_bits(w):
    a, _ = w
    pin_tree(a)
    idx = (VA >> 12) & 511
    a.domain.memory.write_u64(slot(L1G, idx), DATA * PAGE | PTE | 0x60)   # the CPU set A and D
    cmd = abi.MMU_PT_UPDATE_PRESERVE_AD
    assert mmu_update(a, [(slot(L1G, idx) | cmd, DATA * PAGE | PTE_RO)]) == (0, 1)
    assert a.domain.memory.read_u64(slot(L1G, idx)) == DATA * PAGE | PTE_RO | 0x60
    assert mmu_of(a.domain).type_of(DATA) == (None, 0)        # no longer writable


def test_updates_to_a_frame_that_is_not_a_table_are_plain_stores(w):
    a, _ = w
    assert mmu_update(a, [(0x3C0 * PAGE + 16, 0x1122334455667788)]) == (0, 1)
    assert a.domain.memory.read_u64(0x3C0 * PAGE + 16) == 0x1122334455667788


def test_machphys_update_accepts_only_the_identity(w):
    a, _ = w
    cmd = abi.MMU_MACHPHYS_UPDATE
    assert mmu_update(a, [(0x3C0 * PAGE | cmd, 0x3C0)]) == (0, 1)
    assert mmu_update(a, [(0x3C0 * PAGE | cmd, 0x3C1)]) == (EINVAL, 0)


def test_mmu_update_hostile_batches(w):
    a, _ = w
    assert mmu_update(a, [], count=1 << 20) == (-abi.E2BIG, 0xFFFF)
    assert mmu_update(a, [], count=(1 << 31) | 1) == (EINVAL, 0xFFFF)
    assert hypercall(a, MMU_UPDATE, 0xFFF0_0000, 1, PDONE, abi.DOMID_SELF) == EFAULT
    assert a.domain.memory.read_u32(PDONE) == 0
    assert mmu_update(a, [(0x3C0 * PAGE, 1)], foreigndom=2) == (EPERM, 0xFFFF)
    assert mmu_update(a, [(0x3C0 * PAGE, 1)], foreigndom=77) == (-abi.ESRCH, 0xFFFF)
    assert mmu_update(a, [(0x3C0 * PAGE, 1)], foreigndom=3 << 16 | abi.DOMID_SELF) == \
        (EPERM, 0xFFFF)                                        # page-table owner: domain 2
    assert mmu_update(a, [(0x3C0 * PAGE, 7)], pdone=0xFFF0_0000) == (0, 0xFFFF)
    assert a.domain.memory.read_u64(0x3C0 * PAGE) == 7         # a bad pdone changes nothing
    assert mmu_update(a, [(0x3C0 * PAGE, 9)], pdone=0) == (0, 0xFFFF)


def test_a_failed_validation_leaves_no_references_behind(w):
    a, _ = w
    a.domain.memory.write_u64(slot(L1G, 300), 0x3D0 * PAGE | PTE)
    a.domain.memory.write_u64(slot(L1G, 301), 0x9_0000 * PAGE | PTE)    # beyond RAM
    assert mmuext(a, [op(abi.MMUEXT_PIN_L4_TABLE, L4G)]) == (EPERM, 0)
    mmu = mmu_of(a.domain)
    assert mmu.table_frames() == [] and not any(mmu.busy(g) for g in (DATA, 0x3D0, L1G))


# --- update_va_mapping --------------------------------------------------------------------

def test_update_va_mapping_rewrites_the_l1_entry_and_flushes(w):
    a, _ = w
    pin_tree(a)
    a.long_mode(L4G)
    a.domain.memory.write(0x311 * PAGE, b"new page")
    assert hypercall(a, UPDATE_VA, VA, 0x311 * PAGE | PTE, abi.UVMF_INVLPG) == 0
    assert a.read_linear(VA, 8) == b"new page" and a.flushes == [VA]
    assert hypercall(a, UPDATE_VA, VA, 0x312 * PAGE | PTE, abi.UVMF_TLB_FLUSH | abi.UVMF_ALL) == 0
    assert a.flushes == [VA, None]
    a.domain.memory.write_u64(0x312 * PAGE + 64, 0b10)             # mask at VA+64: vCPU 1 only
    flags = (VA + 64) | abi.UVMF_INVLPG
    assert hypercall(a, UPDATE_VA, VA, 0x313 * PAGE | PTE, flags) == 0
    assert a.flushes == [VA, None]
    assert hypercall(a, UPDATE_VA, VA, 0x314 * PAGE | PTE, abi.UVMF_NONE) == 0
    assert a.domain.memory.read_u64(slot(L1G, (VA >> 12) & 511)) == 0x314 * PAGE | PTE


def test_update_va_mapping_hostile(w):
    a, _ = w
    pin_tree(a)
    a.long_mode(L4G)
    assert hypercall(a, UPDATE_VA, VA + (1 << 30), 0x311 * PAGE | PTE, 0) == EINVAL  # no L1 there
    assert hypercall(a, UPDATE_VA, 1 << 50, 0x311 * PAGE | PTE, 0) == EINVAL      # non-canonical
    assert hypercall(a, UPDATE_VA, VA, L2G * PAGE | PTE, 0) == EBUSY              # a table, writable
    assert hypercall(a, UPDATE_VA, VA, 0x311 * PAGE | PTE, 0xFFF0_0000 | abi.UVMF_INVLPG) == EFAULT
    mmu_of(a.domain).unpin(L4G)
    assert hypercall(a, UPDATE_VA, VA, 0x311 * PAGE | PTE, 0) == EINVAL        # L1 not validated
    a.efer = 0
    assert hypercall(a, UPDATE_VA, VA, 0x311 * PAGE | PTE, 0) == EINVAL           # not 4-level


# --- mmuext_op ------------------------------------------------------------------------------

def test_new_baseptr_loads_cr3_and_holds_the_table(w):
    a, _ = w
    assert mmuext(a, [op(abi.MMUEXT_NEW_BASEPTR, L4G)]) == (0, 1)
    assert a.cr3_loads == [L4G * PAGE] and mmu_of(a.domain).base(0) == L4G
    pin_tree(a)
    assert mmuext(a, [op(abi.MMUEXT_UNPIN_TABLE, L4G)]) == (0, 1)
    assert mmu_of(a.domain).type_of(L4G) == (L4, 1)          # still CR3
    assert mmuext(a, [op(abi.MMUEXT_NEW_BASEPTR, L1G)]) == (EINVAL, 0)
    assert a.cr3_loads == [L4G * PAGE]


def test_flushes_and_page_ops(w):
    a, _ = w
    a.domain.memory.write_u64(SCRATCH + 64, 1)                      # vCPU 0
    a.domain.memory.write(0x3C1 * PAGE, b"source!!")
    ops = [op(abi.MMUEXT_TLB_FLUSH_LOCAL), op(abi.MMUEXT_INVLPG_LOCAL, linear_addr=0x5000),
           op(abi.MMUEXT_TLB_FLUSH_ALL), op(abi.MMUEXT_INVLPG_ALL, linear_addr=0x6000),
           op(abi.MMUEXT_INVLPG_MULTI, linear_addr=0x7000, vcpumask=SCRATCH + 64),
           op(abi.MMUEXT_COPY_PAGE, 0x3C0, src_mfn=0x3C1), op(abi.MMUEXT_CLEAR_PAGE, 0x3C1)]
    assert mmuext(a, ops) == (0, 7)
    assert a.flushes == [None, 0x5000, None, 0x6000, 0x7000]
    assert a.domain.memory.read(0x3C0 * PAGE, 8) == b"source!!"
    assert a.domain.memory.read(0x3C1 * PAGE, 8) == bytes(8)


def test_mmuext_hostile(w):
    a, _ = w
    pin_tree(a)
    for bad, rc in [(op(abi.MMUEXT_PIN_L4_TABLE, L4G), EINVAL),        # pinned twice
                    (op(abi.MMUEXT_UNPIN_TABLE, L3G), EINVAL),         # never pinned
                    (op(abi.MMUEXT_CLEAR_PAGE, L1G), EINVAL),          # a page table
                    (op(abi.MMUEXT_COPY_PAGE, L2G, src_mfn=DATA), EINVAL),
                    (op(abi.MMUEXT_COPY_PAGE, 0x3C0, src_mfn=0x9999), EINVAL),
                    (op(abi.MMUEXT_PIN_L2_TABLE, 0x9_9999), EINVAL),    # not its frame
                    (op(abi.MMUEXT_FLUSH_CACHE), -abi.EACCES),
                    (op(abi.MMUEXT_TLB_FLUSH_MULTI, vcpumask=0xFFF0_0000), EFAULT),
                    (op(abi.MMUEXT_SET_LDT), ENOSYS), (op(999), ENOSYS)]:
        assert mmuext(a, [op(abi.MMUEXT_TLB_FLUSH_LOCAL), bad, op(abi.MMUEXT_TLB_FLUSH_LOCAL)]) \
            == (rc, 1), bad
    assert a.domain.memory.read_u64(slot(L1G, (VA >> 12) & 511)) == DATA * PAGE | PTE
    assert mmuext(a, [], count=1 << 20) == (-abi.E2BIG, 0xFFFF)
    assert mmuext(a, [op(abi.MMUEXT_TLB_FLUSH_LOCAL)], foreigndom=2) == (EPERM, 0xFFFF)
    assert hypercall(a, MMUEXT, 0xFFF0_0000, 1, PDONE, abi.DOMID_SELF) == EFAULT


def test_release_all_drops_pins_and_bases(w):
    a, _ = w
    pin_tree(a)
    assert mmuext(a, [op(abi.MMUEXT_NEW_BASEPTR, L4G)]) == (0, 1)
    mmu_of(a.domain).release_all()
    assert mmu_of(a.domain).table_frames() == [] and not mmu_of(a.domain).busy(DATA)
