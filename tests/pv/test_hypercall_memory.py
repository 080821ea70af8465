"""memory_op: the balloon (decrease then increase/populate) and the reservation queries."""

import pytest

from pyvmm.errors import GuestMemoryError
from pyvmm.pv import abi
from pyvmm.pv.hypercall import HYPERVISOR_memory_op as MEMORY_OP, HYPERVISOR_mmuext_op as MMUEXT
from pyvmm.pv.pv_mmu import mmu_of

from .hypercall_vm import PAGE, FakeVcpu, build_tables, hypercall
from .pvworld import SCRATCH, world

RES = SCRATCH                   # the xen_memory_reservation
EXTENTS = SCRATCH + 0x100       # its extent_start array
NR_FRAMES = 1024                # 4 MiB guests


@pytest.fixture
def w():
    table, dom0, (g1, g2) = world()
    return FakeVcpu(g1, table), FakeVcpu(g2, table)


def reservation(vm, cmd, frames, order=0, domid=abi.DOMID_SELF, handle=EXTENTS, nr=None,
                mem_flags=0):
    mem = vm.domain.memory
    for i, gfn in enumerate(frames):
        mem.write_u64(EXTENTS + 8 * i, gfn)
    mem.write(RES, abi.xen_memory_reservation.pack(
        extent_start=handle, nr_extents=len(frames) if nr is None else nr,
        extent_order=order, mem_flags=mem_flags, domid=domid))
    return hypercall(vm, MEMORY_OP, cmd, RES)


def extents(vm, n):
    return [vm.domain.memory.read_u64(EXTENTS + 8 * i) for i in range(n)]


def test_balloon_out_then_back_in(w):
    a, _ = w
    dom = a.domain
    dom.page(0x200)[:4] = b"old!"
    assert reservation(a, abi.XENMEM_decrease_reservation, [0x200, 0x201, 0x300]) == 3
    assert not any(dom.owns(g) for g in (0x200, 0x201, 0x300))
    assert dom.nr_pages == NR_FRAMES - 3 and a.removed == [[0x200, 0x201, 0x300]]
    dom.memory.write_u16(RES + 0x80, abi.DOMID_SELF)
    assert hypercall(a, MEMORY_OP, abi.XENMEM_current_reservation, RES + 0x80) == NR_FRAMES - 3
    with pytest.raises(GuestMemoryError):
        a.read_linear(0x200 * PAGE, 4)                    # the guest can no longer touch it
    assert reservation(a, abi.XENMEM_increase_reservation, [0, 0]) == 2
    assert extents(a, 2) == [0x200, 0x201] and a.added == [[0x200, 0x201]]
    assert dom.owns(0x200) and dom.page(0x200)[:4] == bytes(4)    # comes back zeroed
    assert reservation(a, abi.XENMEM_populate_physmap, [0x300]) == 1
    assert dom.owns(0x300) and dom.nr_pages == NR_FRAMES and a.added[-1] == [0x300]


def test_current_reservation_and_limits(w):
    a, b = w
    a.domain.memory.write_u16(RES + 0x80, abi.DOMID_SELF)
    assert hypercall(a, MEMORY_OP, abi.XENMEM_current_reservation, RES + 0x80) == NR_FRAMES
    assert hypercall(a, MEMORY_OP, abi.XENMEM_maximum_reservation, RES + 0x80) == NR_FRAMES
    assert hypercall(a, MEMORY_OP, abi.XENMEM_maximum_gpfn, RES + 0x80) == NR_FRAMES - 1
    assert hypercall(a, MEMORY_OP, abi.XENMEM_maximum_ram_page) == NR_FRAMES
    a.domain.memory.write_u16(RES + 0x80, 2)
    assert hypercall(a, MEMORY_OP, abi.XENMEM_current_reservation, RES + 0x80) == -abi.EPERM
    a.domain.memory.write_u16(RES + 0x80, 99)
    assert hypercall(a, MEMORY_OP, abi.XENMEM_current_reservation, RES + 0x80) == -abi.ESRCH
    assert hypercall(a, MEMORY_OP, abi.XENMEM_current_reservation, 0xFFF0_0000) == -abi.EFAULT
    assert hypercall(a, MEMORY_OP, abi.XENMEM_exchange, RES) == -abi.ENOSYS


def test_a_frame_mapped_by_another_domain_cannot_be_ballooned_out(w):
    a, b = w
    b.domain.on_foreign_map = lambda mapping: None
    a.domain.grant_table.grant_access(9, 2, 0x250)
    mapping = b.domain.grant_table.map_grant_ref(abi.GNTMAP_host_map, 9, 1, 0x260 * PAGE)
    assert reservation(a, abi.XENMEM_decrease_reservation, [0x251, 0x250, 0x252]) == 1
    assert a.domain.owns(0x250) and a.domain.owns(0x252) and a.removed == [[0x251]]
    # nor the frame where the mapper placed it
    assert reservation(b, abi.XENMEM_decrease_reservation, [0x260]) == 0
    b.domain.grant_table.unmap_grant_ref(mapping.handle, 0x260 * PAGE)
    assert reservation(a, abi.XENMEM_decrease_reservation, [0x250]) == 1


def test_page_tables_and_special_frames_stay(w):
    a, _ = w
    build_tables(a.domain, 0x300, 0x301, 0x302, 0x303, 0x4000_0000, 0x310)
    a.domain.memory.write(SCRATCH + 0x200, abi.mmuext_op.pack(cmd=abi.MMUEXT_PIN_L4_TABLE,
                                                              arg1={"mfn": 0x300}))
    assert hypercall(a, MMUEXT, SCRATCH + 0x200, 1, 0, abi.DOMID_SELF) == 0
    for gfn in (0x300, 0x303, 0x310, a.domain.grant_table.frames[0]):
        assert reservation(a, abi.XENMEM_decrease_reservation, [gfn]) == 0, hex(gfn)
    a.domain.place_shared_info(0x3E0)
    assert reservation(a, abi.XENMEM_decrease_reservation, [0x3E0]) == 0
    assert a.removed == [] and mmu_of(a.domain).type_of(0x303)[1] == 1


def test_extents_of_higher_order(w):
    a, _ = w
    assert reservation(a, abi.XENMEM_decrease_reservation, [0x200, 0x210], order=2) == 2
    assert a.removed == [[0x200, 0x201, 0x202, 0x203, 0x210, 0x211, 0x212, 0x213]]
    assert reservation(a, abi.XENMEM_increase_reservation, [0], order=3) == 0   # no 8-run free
    assert reservation(a, abi.XENMEM_increase_reservation, [0, 0], order=2) == 2
    assert extents(a, 2) == [0x200, 0x210]
    assert reservation(a, abi.XENMEM_decrease_reservation, [0], order=10) == 0   # over order 9


def test_increase_honours_address_bits_and_stops_when_nothing_is_free(w):
    a, _ = w
    assert reservation(a, abi.XENMEM_decrease_reservation, [0x20, 0x3F0]) == 2
    assert reservation(a, abi.XENMEM_increase_reservation, [0, 0], mem_flags=20) == 1
    assert extents(a, 1) == [0x20]                        # 20 address bits: below 1 MiB
    assert reservation(a, abi.XENMEM_increase_reservation, [0, 0, 0]) == 1
    assert extents(a, 1) == [0x3F0] and a.domain.nr_pages == NR_FRAMES


@pytest.mark.parametrize("kw,done", [
    ({"domid": 2}, -abi.EPERM),                           # another domain's memory
    ({"domid": 99}, 0),                                   # no such domain: nothing done
    ({"nr": 1 << 40}, 0),                                 # huge count: too large to encode
    ({"mem_flags": 1 << 16}, 0),                          # populate-on-demand: not for PV
    ({"handle": 0xFFF0_0000}, 0),                         # extents beyond RAM
])
def test_hostile_reservations_change_nothing(w, kw, done):
    a, b = w
    assert reservation(a, abi.XENMEM_decrease_reservation, [0x200], **kw) == done
    assert a.domain.nr_pages == NR_FRAMES and b.domain.nr_pages == NR_FRAMES and a.removed == []


def test_hostile_extents_stop_the_call_where_they_are(w):
    a, _ = w
    assert reservation(a, abi.XENMEM_decrease_reservation, [0x200, 0x5000, 0x201]) == 1
    assert reservation(a, abi.XENMEM_decrease_reservation, [0x200]) == 0      # already out
    assert reservation(a, abi.XENMEM_populate_physmap, [0x201]) == 0          # still in
    assert reservation(a, abi.XENMEM_populate_physmap, [0x9000]) == 0         # beyond RAM
    assert hypercall(a, MEMORY_OP, abi.XENMEM_decrease_reservation, 0xFFF0_0000) == 0
    # a continuation start past the end does nothing
    start = 5 << abi.MEMOP_EXTENT_SHIFT
    a.domain.memory.write_u64(EXTENTS, 0x202)
    assert hypercall(a, MEMORY_OP, start | abi.XENMEM_decrease_reservation, RES) == 5
    assert a.removed == [[0x200]]
    # an unwritable extent array: increase takes nothing
    assert reservation(a, abi.XENMEM_increase_reservation, [0], handle=0xFFF0_0000) == 0
    assert not a.domain.owns(0x200)
