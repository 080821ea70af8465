"""XENMEM_* (HYPERVISOR_memory_op): the balloon and the reservation queries.

Responsibility: give frames back (XENMEM_decrease_reservation), take frames again
(XENMEM_increase_reservation, XENMEM_populate_physmap), and answer the size queries
(current/maximum reservation, maximum_gpfn, maximum_ram_page), with Xen's results
(xen/include/public/memory.h): a reservation call returns how many extents it
completed, and bad input stops it early instead of failing it; the VMM hears about
every change through ``vm.frames_removed(gfns)`` / ``vm.frames_added(gfns)``.

Address model (as pv_mmu): a domain's "machine" frames are its own gfns, so
increase_reservation hands back gfns the domain had released (lowest first) and
populate_physmap fills the gfns the guest names; both write the frame number into
``extent_start[i]`` as Xen does for a PV guest.

Invariants:
- a frame is released only if the domain owns it and nothing uses it: not mapped or
  pinned by another domain, not shared_info or a grant-table frame (Domain.release),
  not a page table or mapped by one (pv_mmu), not the host address of a grant
  mapping the domain holds;
- the VMM is told of exactly the frames that changed, once per call;
- a call never touches another domain: ``domid`` other than the caller is -EPERM
  (-ESRCH if there is no such domain) even for a privileged caller, because pyvmm's
  domain 0 is Python code that balloons through Domain directly.

Simplifications: extents up to order 9 (2 MiB, Xen's default limit for a guest);
``mem_flags`` address bits are honoured when choosing frames, NUMA node requests are
ignored (one node), populate-on-demand is refused (return 0, as Xen for a PV guest);
as Xen, an extent of order > 0 that fails part-way leaves its first frames released.
"""

import struct

from pyvmm.errors import FrameError, GuestFault, GuestMemoryError
from pyvmm.pv import abi
from pyvmm.pv.pv_mmu import mmu_of

MAX_EXTENT_ORDER = 9
XENMEMF_populate_on_demand = 1 << 16      # memory.h
_PFN = struct.Struct("<Q")                # xen_pfn_t
_DOMID = struct.Struct("<H")              # domid_t
_MAX_EXTENTS = 0xFFFF_FFFF >> abi.MEMOP_EXTENT_SHIFT


class _Refused(Exception):
    """One extent cannot be done: the reservation call stops there."""


def _read_pfn(vm, handle, i):
    return _PFN.unpack(vm.read_linear(handle + 8 * i, 8))[0]


def _release(dom, gfn):
    mmu = mmu_of(dom)
    if mmu.busy(gfn):
        raise _Refused(f"frame {gfn:#x} is a page table or mapped by one")
    if mmu.granted(gfn) is not None:
        raise _Refused(f"frame {gfn:#x} holds a grant mapping")
    try:
        dom.release(gfn)
    except FrameError as exc:
        raise _Refused(str(exc)) from None


class _FreeFrames:
    """The released gfns of a domain, handed out lowest first in aligned runs."""

    def __init__(self, dom, limit):
        self.dom = dom
        self.limit = limit            # first gfn not allowed (address bits)
        self.cursor = 0

    def take(self, order):
        size = 1 << order
        start = -(-self.cursor // size) * size
        while start + size <= self.limit:
            run = range(start, start + size)
            if not any(self.dom.owns(g) for g in run):
                self.cursor = start + size
                return run
            start += size
        raise _Refused(f"no free run of {size} frame(s) below {self.limit:#x}")


def _reservation(vm, op, start, arg):
    dom = vm.domain
    layout = abi.xen_memory_reservation
    try:
        r = layout.unpack(vm.read_linear(arg, layout.size))
    except (GuestFault, GuestMemoryError):
        return start
    nr, order, handle = r["nr_extents"], r["extent_order"], r["extent_start"]
    if nr > _MAX_EXTENTS or start >= nr or order > MAX_EXTENT_ORDER:
        return start
    if r["mem_flags"] & XENMEMF_populate_on_demand:
        return start
    target = dom.resolve(r["domid"])
    if target is None:
        return start
    if target is not dom:
        return -abi.EPERM
    bits = r["mem_flags"] & 0xFF
    limit = dom.nr_gfns if not bits else min(dom.nr_gfns, 1 << max(bits - abi.PAGE_SHIFT, 0))
    free = _FreeFrames(dom, limit)
    removed, added = [], []
    done = start
    try:
        for i in range(start, nr):
            if op == abi.XENMEM_decrease_reservation:
                first = _read_pfn(vm, handle, i)
                for gfn in range(first, first + (1 << order)):
                    _release(dom, gfn)
                    removed.append(gfn)
            else:
                if op == abi.XENMEM_increase_reservation:
                    run = free.take(order)
                else:
                    first = _read_pfn(vm, handle, i)
                    run = range(first, first + (1 << order))
                    if not all(0 <= g < dom.nr_gfns and not dom.owns(g) for g in run):
                        raise _Refused(f"frames {first:#x}+{len(run)} are not all free RAM")
                if handle:
                    vm.write_linear(handle + 8 * i, _PFN.pack(run[0]))
                for gfn in run:
                    dom.populate(gfn)
                    added.append(gfn)
            done = i + 1
    except (_Refused, GuestFault, GuestMemoryError):
        pass
    if removed:
        vm.frames_removed(removed)
    if added:
        vm.frames_added(added)
    return done


def _query(vm, arg, what):
    dom = vm.domain
    try:
        domid = _DOMID.unpack(vm.read_linear(arg, 2))[0]
    except (GuestFault, GuestMemoryError):
        return -abi.EFAULT
    target = dom.resolve(domid)
    if target is None:
        return -abi.ESRCH
    if target is not dom and not dom.privileged:
        return -abi.EPERM
    return what(target)


_RESERVATION = (abi.XENMEM_increase_reservation, abi.XENMEM_decrease_reservation,
                abi.XENMEM_populate_physmap)
_QUERIES = {
    abi.XENMEM_current_reservation: lambda d: d.nr_pages,
    abi.XENMEM_maximum_reservation: lambda d: d.nr_gfns,
    abi.XENMEM_maximum_gpfn: lambda d: d.nr_gfns - 1,
}


def memory_op(vm, cmd, arg):
    """HYPERVISOR_memory_op(cmd, arg) from ``vm.domain``: a count, a size, or -errno."""
    op, start = cmd & abi.MEMOP_CMD_MASK, cmd >> abi.MEMOP_EXTENT_SHIFT
    if op in _RESERVATION:
        return _reservation(vm, op, start, arg)
    if op in _QUERIES:
        return _query(vm, arg, _QUERIES[op])
    if op == abi.XENMEM_maximum_ram_page:
        return vm.domain.nr_gfns
    return -abi.ENOSYS
