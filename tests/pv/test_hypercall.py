"""The hypercall table as a guest sees it: numbers, sub-commands, results, hostile input.

Every call goes through ``Hypercalls.call`` with the five argument registers, the way
handle_vmcall issues it, from a fake vCPU whose pointers walk the guest's memory.
"""

import pytest

from pyvmm.cpu.handlers import Shutdown
from pyvmm.pv import abi
from pyvmm.pv.hypercall import (HYPERVISOR_console_io as CONSOLE, HYPERVISOR_event_channel_op as EVTCHN,
                                HYPERVISOR_grant_table_op as GNTTAB, HYPERVISOR_multicall as MULTICALL,
                                HYPERVISOR_sched_op as SCHED, HYPERVISOR_set_timer_op as TIMER,
                                HYPERVISOR_xen_version as VERSION, Hypercalls)

from .hypercall_vm import FakeVcpu, hypercall
from .pvworld import DATA_GFN, SCRATCH, world

EFAULT, EINVAL, ENOSYS, EPERM = -abi.EFAULT, -abi.EINVAL, -abi.ENOSYS, -abi.EPERM
BAD = 0xFFF0_0000              # a pointer outside every guest's RAM (paging off: 32-bit)
ALL_NUMBERS = [abi.__HYPERVISOR_mmu_update, abi.__HYPERVISOR_memory_op, abi.__HYPERVISOR_multicall,
               abi.__HYPERVISOR_set_timer_op, abi.__HYPERVISOR_xen_version,
               abi.__HYPERVISOR_console_io, abi.__HYPERVISOR_grant_table_op,
               abi.__HYPERVISOR_update_va_mapping, abi.__HYPERVISOR_mmuext_op,
               abi.__HYPERVISOR_sched_op, abi.__HYPERVISOR_event_channel_op]


@pytest.fixture
def w():
    table, dom0, (g1, g2) = world()
    return table, FakeVcpu(g1, table), FakeVcpu(g2, table)


def test_the_table_has_every_hypercall_of_the_issue_under_xen_numbers():
    calls = Hypercalls(0x40010)
    assert {n: calls.name(n) for n in ALL_NUMBERS} == {
        1: "mmu_update", 12: "memory_op", 13: "multicall", 15: "set_timer_op", 17: "xen_version",
        18: "console_io", 20: "grant_table_op", 14: "update_va_mapping", 26: "mmuext_op",
        29: "sched_op", 32: "event_channel_op"}
    assert calls.name(99) == "unknown"


@pytest.mark.parametrize("number", [0, 2, 40, 1 << 32, (1 << 64) - 1])
def test_a_wrong_hypercall_number_is_enosys_and_the_guest_goes_on(w, number):
    _, vm, _ = w
    assert hypercall(vm, number, 1, 2, 3) == ENOSYS
    assert hypercall(vm, VERSION, abi.XENVER_version) == 0x0004_000A


@pytest.mark.parametrize("number", [abi.__HYPERVISOR_mmu_update, abi.__HYPERVISOR_memory_op,
                                    abi.__HYPERVISOR_grant_table_op, abi.__HYPERVISOR_mmuext_op,
                                    abi.__HYPERVISOR_event_channel_op,
                                    abi.__HYPERVISOR_update_va_mapping])
def test_a_vcpu_without_a_pv_domain_gets_enosys_for_domain_calls(w, number):
    _, vm, _ = w
    vm.domain = None
    assert hypercall(vm, number, 0, SCRATCH, 1, 0, 0) == ENOSYS


# --- xen_version ------------------------------------------------------------------------

def test_xen_version_answers_every_query_into_guest_memory(w):
    _, vm, _ = w
    mem = vm.domain.memory
    assert hypercall(vm, VERSION, abi.XENVER_version) == 0x0004_000A
    assert hypercall(vm, VERSION, abi.XENVER_pagesize) == 4096
    assert hypercall(vm, VERSION, abi.XENVER_extraversion, SCRATCH) == 0
    assert mem.read(SCRATCH, 16) == b".0-pyvmm".ljust(16, b"\0")
    assert hypercall(vm, VERSION, abi.XENVER_capabilities, SCRATCH) == 0
    assert mem.read(SCRATCH, 15) == b"xen-3.0-x86_64\0"
    assert hypercall(vm, VERSION, abi.XENVER_changeset, SCRATCH) == 0
    assert mem.read(SCRATCH, 12) == b"unavailable\0"
    assert hypercall(vm, VERSION, abi.XENVER_platform_parameters, SCRATCH) == 0
    assert mem.read_u64(SCRATCH) == 0xFFFF_8000_0000_0000
    assert hypercall(vm, VERSION, abi.XENVER_compile_info, SCRATCH) == 0
    info = abi.xen_compile_info.unpack(mem.read(SCRATCH, abi.xen_compile_info.size))
    assert info["compiler"].startswith(b"pyvmm") and info["compile_by"].rstrip(b"\0") == b"pyvmm"
    mem.write(SCRATCH, abi.xen_feature_info.pack(submap_idx=0, submap=0xFFFF))
    assert hypercall(vm, VERSION, abi.XENVER_get_features, SCRATCH) == 0
    submap = abi.xen_feature_info.unpack(mem.read(SCRATCH, 8))["submap"]
    assert submap == (1 << abi.XENFEAT_supervisor_mode_kernel
                      | 1 << abi.XENFEAT_mmu_pt_update_preserve_ad)
    mem.write(SCRATCH, b"\xAA" * 16)
    assert hypercall(vm, VERSION, abi.XENVER_guest_handle, SCRATCH) == 0
    assert mem.read(SCRATCH, 16) == bytes(16)


def test_xen_version_hostile_input(w):
    _, vm, _ = w
    vm.domain.memory.write(SCRATCH, abi.xen_feature_info.pack(submap_idx=1))
    assert hypercall(vm, VERSION, abi.XENVER_get_features, SCRATCH) == EINVAL
    assert hypercall(vm, VERSION, abi.XENVER_extraversion, BAD) == EFAULT
    assert hypercall(vm, VERSION, abi.XENVER_capabilities, 4 * 1024 * 1024 - 100) == EFAULT
    assert hypercall(vm, VERSION, abi.XENVER_commandline, SCRATCH) == EPERM
    assert hypercall(vm, VERSION, abi.XENVER_build_id, SCRATCH) == ENOSYS
    assert hypercall(vm, VERSION, 77) == ENOSYS


# --- console_io -------------------------------------------------------------------------

def test_console_write_reaches_the_console_and_hostile_writes_do_not(w):
    _, vm, _ = w
    vm.domain.memory.write(SCRATCH, b"hello")
    assert hypercall(vm, CONSOLE, abi.CONSOLEIO_write, 5, SCRATCH) == 5
    assert hypercall(vm, CONSOLE, abi.CONSOLEIO_write, 5, BAD) == EFAULT
    assert hypercall(vm, CONSOLE, abi.CONSOLEIO_write, 1 << 40, SCRATCH) == EINVAL
    assert hypercall(vm, CONSOLE, abi.CONSOLEIO_read, 5, SCRATCH) == ENOSYS
    vm.domain.release(SCRATCH >> 12)
    assert hypercall(vm, CONSOLE, abi.CONSOLEIO_write, 5, SCRATCH) == EFAULT   # ballooned out
    assert bytes(vm.console) == b"hello"


# --- sched_op ---------------------------------------------------------------------------

def test_sched_yield_and_block(w):
    _, vm, _ = w
    assert hypercall(vm, SCHED, abi.SCHEDOP_yield) == 0 and vm.yields == 1
    si = vm.domain.shared_info()
    mask_at = abi.vcpu_info.offsetof("evtchn_upcall_mask")
    si[mask_at] = 1
    assert hypercall(vm, SCHED, abi.SCHEDOP_block) == 0
    assert vm.blocks == 1 and si[mask_at] == 0          # block enables event delivery


def test_sched_block_returns_at_once_when_an_event_is_pending(w):
    _, vm, _ = w
    port = vm.domain.evtchn.bind_ipi(0)
    vm.domain.evtchn.send(port)
    assert hypercall(vm, SCHED, abi.SCHEDOP_block) == 0 and vm.blocks == 0


@pytest.mark.parametrize("reason,status", [(0, 0), (1, 0), (3, 1), (4, 1)])
def test_sched_shutdown_stops_the_vm(w, reason, status):
    _, vm, _ = w
    vm.domain.memory.write_u32(SCRATCH, reason)
    result = hypercall(vm, SCHED, abi.SCHEDOP_shutdown, SCRATCH)
    assert isinstance(result, Shutdown) and result.status == status


def test_sched_shutdown_hostile_reasons_and_pointers(w):
    _, vm, _ = w
    for reason, rc in ((abi.SHUTDOWN_suspend, EINVAL), (abi.SHUTDOWN_soft_reset, EINVAL),
                       (6, EINVAL), (0xFFFF_FFFF, EINVAL)):
        vm.domain.memory.write_u32(SCRATCH, reason)
        assert hypercall(vm, SCHED, abi.SCHEDOP_shutdown, SCRATCH) == rc
    assert hypercall(vm, SCHED, abi.SCHEDOP_shutdown, BAD) == EFAULT
    assert hypercall(vm, SCHED, abi.SCHEDOP_remote_shutdown, SCRATCH) == ENOSYS
    assert hypercall(vm, SCHED, 1234) == ENOSYS


def _poll_args(vm, ports, timeout, nr=None):
    mem = vm.domain.memory
    for i, p in enumerate(ports):
        mem.write_u32(SCRATCH + 0x100 + 4 * i, p)
    mem.write(SCRATCH, abi.sched_poll.pack(ports=SCRATCH + 0x100,
                                           nr_ports=len(ports) if nr is None else nr,
                                           timeout=timeout))


def test_sched_poll_sleeps_until_a_port_or_returns_at_once(w):
    _, vm, _ = w
    ports = [vm.domain.evtchn.bind_ipi(0), vm.domain.evtchn.bind_ipi(0)]
    _poll_args(vm, ports, 5_000_000)
    assert hypercall(vm, SCHED, abi.SCHEDOP_poll, SCRATCH) == 0
    assert vm.polls == [(ports, 5_000_000)]
    vm.domain.evtchn.send(ports[1])
    assert hypercall(vm, SCHED, abi.SCHEDOP_poll, SCRATCH) == 0
    assert len(vm.polls) == 1                                 # pending: no sleep


def test_sched_poll_hostile(w):
    _, vm, _ = w
    _poll_args(vm, [1], 0, nr=129)
    assert hypercall(vm, SCHED, abi.SCHEDOP_poll, SCRATCH) == EINVAL       # too many ports
    _poll_args(vm, [5000], 0)
    assert hypercall(vm, SCHED, abi.SCHEDOP_poll, SCRATCH) == EINVAL       # port out of range
    vm.domain.memory.write(SCRATCH, abi.sched_poll.pack(ports=BAD, nr_ports=2, timeout=0))
    assert hypercall(vm, SCHED, abi.SCHEDOP_poll, SCRATCH) == EFAULT
    assert hypercall(vm, SCHED, abi.SCHEDOP_poll, BAD) == EFAULT
    assert vm.polls == []


# --- set_timer_op -----------------------------------------------------------------------

def test_set_timer_op_sets_cancels_and_tames_wrapped_deadlines(w):
    _, vm, _ = w
    now = vm.now_ns
    assert hypercall(vm, TIMER, now + 1000) == 0
    assert hypercall(vm, TIMER, 0) == 0
    assert hypercall(vm, TIMER, (-5) & ((1 << 64) - 1)) == 0          # wrapped negative
    assert hypercall(vm, TIMER, now + (1 << 51)) == 0                  # weeks ahead
    assert hypercall(vm, TIMER, now - 10) == 0                         # already past: fires now
    assert vm.timers == [now + 1000, 0, now + 100_000_000, now + 100_000_000, now - 10]


# --- event_channel_op and grant_table_op through the vCPU's page tables -----------------

def test_event_channels_between_two_guests_by_hypercall(w):
    _, a, b = w
    ma, mb = a.domain.memory, b.domain.memory
    ma.write(SCRATCH, abi.evtchn_alloc_unbound.pack(dom=abi.DOMID_SELF, remote_dom=2))
    assert hypercall(a, EVTCHN, abi.EVTCHNOP_alloc_unbound, SCRATCH) == 0
    a_port = abi.evtchn_alloc_unbound.unpack(ma.read(SCRATCH, 8))["port"]
    mb.write(SCRATCH, abi.evtchn_bind_interdomain.pack(remote_dom=1, remote_port=a_port))
    assert hypercall(b, EVTCHN, abi.EVTCHNOP_bind_interdomain, SCRATCH) == 0
    b_port = abi.evtchn_bind_interdomain.unpack(mb.read(SCRATCH, 12))["local_port"]
    ma.write(SCRATCH, abi.evtchn_send.pack(port=a_port))
    assert hypercall(a, EVTCHN, abi.EVTCHNOP_send, SCRATCH) == 0
    assert b.domain.evtchn.is_pending(b_port)
    ma.write(SCRATCH, abi.evtchn_status.pack(dom=abi.DOMID_SELF, port=a_port))
    assert hypercall(a, EVTCHN, abi.EVTCHNOP_status, SCRATCH) == 0
    status = abi.evtchn_status.unpack(ma.read(SCRATCH, abi.evtchn_status.size))
    assert status["status"] == abi.EVTCHNSTAT_interdomain
    b.domain.shared_info()[abi.shared_info.offsetof("evtchn_mask")] |= 1 << b_port
    mb.write(SCRATCH, abi.evtchn_unmask.pack(port=b_port))
    assert hypercall(b, EVTCHN, abi.EVTCHNOP_unmask, SCRATCH) == 0
    assert not b.domain.evtchn.is_masked(b_port)
    ma.write(SCRATCH, abi.evtchn_close.pack(port=a_port))
    assert hypercall(a, EVTCHN, abi.EVTCHNOP_close, SCRATCH) == 0
    # events to a closed port: EINVAL; the peer is back to unbound and carries on
    assert hypercall(a, EVTCHN, abi.EVTCHNOP_send, SCRATCH) == EINVAL
    mb.write(SCRATCH, abi.evtchn_send.pack(port=b_port))
    assert hypercall(b, EVTCHN, abi.EVTCHNOP_send, SCRATCH) == 0


def test_event_channel_hostile(w):
    _, a, _ = w
    ma = a.domain.memory
    assert hypercall(a, EVTCHN, abi.EVTCHNOP_send, BAD) == EFAULT
    ma.write(SCRATCH, abi.evtchn_send.pack(port=4095))
    assert hypercall(a, EVTCHN, abi.EVTCHNOP_send, SCRATCH) == EINVAL
    ma.write(SCRATCH, abi.evtchn_alloc_unbound.pack(dom=2, remote_dom=1))
    assert hypercall(a, EVTCHN, abi.EVTCHNOP_alloc_unbound, SCRATCH) == EPERM   # another domain
    ma.write(SCRATCH, abi.evtchn_bind_interdomain.pack(remote_dom=77, remote_port=1))
    assert hypercall(a, EVTCHN, abi.EVTCHNOP_bind_interdomain, SCRATCH) == -abi.ESRCH
    assert hypercall(a, EVTCHN, abi.EVTCHNOP_init_control, SCRATCH) == ENOSYS
    assert hypercall(a, EVTCHN, 1 << 40 | abi.EVTCHNOP_send, SCRATCH) == EINVAL  # int cmd


def test_event_channel_pointers_go_through_the_guests_page_tables(w):
    from .hypercall_vm import build_tables
    _, a, _ = w
    va = 0x4000_0000
    build_tables(a.domain, 0x300, 0x301, 0x302, 0x303, va, 0x310)
    a.long_mode(0x300)
    a.domain.memory.write(0x310 * 4096 + 8, abi.evtchn_alloc_unbound.pack(dom=abi.DOMID_SELF,
                                                                           remote_dom=2))
    assert hypercall(a, EVTCHN, abi.EVTCHNOP_alloc_unbound, va + 8) == 0
    port = abi.evtchn_alloc_unbound.unpack(a.domain.memory.read(0x310 * 4096 + 8, 8))["port"]
    assert a.domain.evtchn.status(abi.DOMID_SELF, port)["status"] == abi.EVTCHNSTAT_unbound
    assert hypercall(a, EVTCHN, abi.EVTCHNOP_alloc_unbound, va + 4096) == EFAULT   # unmapped
    assert a.domain.access.__class__.__name__ == "PhysicalAccess"     # restored after the call


def test_grant_table_ops_by_hypercall(w):
    _, a, b = w
    a.domain.grant_table.grant_access(8, 2, DATA_GFN)
    a.domain.page(DATA_GFN)[:4] = b"gnt!"
    mb = b.domain.memory
    mb.write(SCRATCH, abi.gnttab_query_size.pack(dom=abi.DOMID_SELF))
    assert hypercall(b, GNTTAB, abi.GNTTABOP_query_size, SCRATCH, 1) == 0
    q = abi.gnttab_query_size.unpack(mb.read(SCRATCH, abi.gnttab_query_size.size))
    assert (q["nr_frames"], q["max_nr_frames"], q["status"]) == (1, 4, 0)
    mb.write(SCRATCH, abi.gnttab_setup_table.pack(dom=abi.DOMID_SELF, nr_frames=2,
                                                  frame_list=SCRATCH + 0x100))
    assert hypercall(b, GNTTAB, abi.GNTTABOP_setup_table, SCRATCH, 1) == 0
    assert [mb.read_u64(SCRATCH + 0x100 + 8 * i) for i in range(2)] == [0x100, 0x101]
    copy = {"source": {"u": {"ref": 8}, "domid": 1, "offset": 0},
            "dest": {"u": {"gmfn": 0x210}, "domid": abi.DOMID_SELF, "offset": 16},
            "len": 4, "flags": abi.GNTCOPY_source_gref}
    mb.write(SCRATCH, abi.gnttab_copy.pack(**copy))
    assert hypercall(b, GNTTAB, abi.GNTTABOP_copy, SCRATCH, 1) == 0
    assert mb.read(0x210 * 4096 + 16, 4) == b"gnt!"
    bad_ref = dict(copy, source={"u": {"ref": 100000}, "domid": 1, "offset": 0})
    mb.write(SCRATCH, abi.gnttab_copy.pack(**bad_ref))
    assert hypercall(b, GNTTAB, abi.GNTTABOP_copy, SCRATCH, 1) == 0
    assert abi.gnttab_copy.unpack(mb.read(SCRATCH, abi.gnttab_copy.size))["status"] == \
        abi.GNTST_bad_gntref                                      # out-of-range grant ref
    mb.write(SCRATCH, abi.gnttab_map_grant_ref.pack(host_addr=0x220 * 4096, flags=abi.GNTMAP_host_map,
                                                    ref=8, dom=1))
    assert hypercall(b, GNTTAB, abi.GNTTABOP_map_grant_ref, SCRATCH, 1) == 0
    m = abi.gnttab_map_grant_ref.unpack(mb.read(SCRATCH, abi.gnttab_map_grant_ref.size))
    assert m["status"] == abi.GNTST_general_error      # no VMM hook to place foreign frames
    mb.write(SCRATCH, abi.gnttab_unmap_grant_ref.pack(host_addr=0, handle=5))
    assert hypercall(b, GNTTAB, abi.GNTTABOP_unmap_grant_ref, SCRATCH, 1) == 0
    assert abi.gnttab_unmap_grant_ref.unpack(
        mb.read(SCRATCH, abi.gnttab_unmap_grant_ref.size))["status"] == abi.GNTST_bad_handle


def test_grant_table_hostile_counts_and_pointers(w):
    _, a, _ = w
    assert hypercall(a, GNTTAB, abi.GNTTABOP_copy, SCRATCH, 1 << 20) == -abi.E2BIG
    assert hypercall(a, GNTTAB, abi.GNTTABOP_copy, SCRATCH, 0xFFFF_FFFF) == EINVAL
    assert hypercall(a, GNTTAB, abi.GNTTABOP_copy, BAD, 1) == EFAULT
    assert hypercall(a, GNTTAB, abi.GNTTABOP_query_size, SCRATCH, 2) == EINVAL
    assert hypercall(a, GNTTAB, abi.GNTTABOP_transfer, SCRATCH, 1) == ENOSYS


# --- multicall --------------------------------------------------------------------------

def _entries(vm, calls, at=SCRATCH + 0x800):
    raw = b"".join(abi.multicall_entry.pack(op=op, result=0xDEAD, args=list(args) + [0] * (6 - len(args)))
                   for op, args in calls)
    vm.domain.memory.write(at, raw)
    return at


def _results(vm, n, at=SCRATCH + 0x800):
    size = abi.multicall_entry.size
    return [signed64(abi.multicall_entry.unpack(vm.domain.memory.read(at + i * size, size))["result"])
            for i in range(n)]


def signed64(v):
    return v - (1 << 64) if v >> 63 else v


def test_multicall_runs_every_entry_and_writes_each_result(w):
    _, vm, _ = w
    vm.domain.memory.write(SCRATCH, b"mc")
    at = _entries(vm, [(VERSION, [abi.XENVER_version]), (CONSOLE, [abi.CONSOLEIO_write, 2, SCRATCH]),
                       (999, [1]), (CONSOLE, [abi.CONSOLEIO_write, 2, BAD]),
                       (SCHED, [abi.SCHEDOP_yield]), (MULTICALL, [SCRATCH + 0x800, 1])])
    assert hypercall(vm, MULTICALL, at, 6) == 0
    assert _results(vm, 6) == [0x4000A, 2, ENOSYS, EFAULT, 0, EINVAL]   # nested multicall: EINVAL
    assert bytes(vm.console) == b"mc" and vm.yields == 1


def test_multicall_shutdown_ends_the_batch_and_stops_the_vm(w):
    _, vm, _ = w
    vm.domain.memory.write_u32(SCRATCH, abi.SHUTDOWN_poweroff)
    at = _entries(vm, [(SCHED, [abi.SCHEDOP_shutdown, SCRATCH]), (SCHED, [abi.SCHEDOP_yield])])
    assert isinstance(hypercall(vm, MULTICALL, at, 2), Shutdown)
    assert vm.yields == 0


def test_multicall_hostile(w):
    _, vm, _ = w
    assert hypercall(vm, MULTICALL, BAD, 1) == EFAULT
    assert hypercall(vm, MULTICALL, SCRATCH, 1 << 31) == -abi.E2BIG
    at = 4 * 1024 * 1024 - abi.multicall_entry.size       # the last entry in RAM
    _entries(vm, [(SCHED, [abi.SCHEDOP_yield])], at=at)
    assert hypercall(vm, MULTICALL, at, 2) == EFAULT        # the 2nd entry is beyond RAM
    assert _results(vm, 1, at=at) == [0] and vm.yields == 1
    assert hypercall(vm, MULTICALL, at, 1) == 0             # not left "in a multicall"
