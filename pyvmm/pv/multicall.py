"""HYPERVISOR_multicall: a batch of hypercalls in one trap (xen/include/public/xen.h).

Responsibility: read each ``multicall_entry`` of the guest's list, run its ``op``
with ``args[0..4]`` (the five registers of the x86-64 convention) through the same
dispatch a VMCALL uses, and write the entry's ``result`` back, one entry at a time.

Invariants (Xen's):
- a failing call does not stop the batch: its -errno is its entry's result;
- a multicall inside a multicall is refused with -EINVAL as its result (no re-entry);
- an entry that cannot be read or whose result cannot be written ends the call with
  -EFAULT; the entries before it are done and keep their results;
- a call that stops the VM (a shutdown) ends the batch at once and is returned as is.

Deviation: more than ``MAX_CALLS`` entries give -E2BIG before any runs, since pyvmm
has no hypercall continuations (grant_table and pv_mmu use the same rule).
"""

from pyvmm.errors import GuestFault, GuestMemoryError
from pyvmm.pv import abi

MAX_CALLS = 4096
_ENTRY = abi.multicall_entry
_RESULT = _ENTRY.offsetof("result")
_NR_ARGS = 5


class MulticallState:
    """Whether a multicall is running (per Hypercalls table: pyvmm runs one vCPU at a time)."""

    def __init__(self):
        self.active = False


def multicall(vm, state, dispatch, call_list, nr_calls):
    """Run ``nr_calls`` entries at ``call_list``; ``dispatch(vm, op, args)`` runs one call.

    Returns 0, -errno, or the non-integer outcome (a shutdown) one call returned.
    """
    if state.active:
        return -abi.EINVAL
    nr_calls &= 0xFFFF_FFFF
    if nr_calls > MAX_CALLS:
        return -abi.E2BIG
    state.active = True
    try:
        for addr in range(call_list, call_list + nr_calls * _ENTRY.size, _ENTRY.size):
            try:
                entry = _ENTRY.unpack(vm.read_linear(addr, _ENTRY.size))
            except (GuestFault, GuestMemoryError):
                return -abi.EFAULT
            result = dispatch(vm, entry["op"], tuple(entry["args"][:_NR_ARGS]))
            if not isinstance(result, int):
                return result
            try:
                vm.write_linear(addr + _RESULT, (result & (2 ** 64 - 1)).to_bytes(8, "little"))
            except (GuestFault, GuestMemoryError):
                return -abi.EFAULT
    finally:
        state.active = False
    return 0
