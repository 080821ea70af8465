"""The hypercall table: Xen's numbering and x86-64 calling convention.

RAX holds the number, RDI, RSI, RDX, R10, R8 the arguments, RAX the result
(xen/include/public/arch-x86/xen-x86_64.h). Numbers from xen/include/public/xen.h;
sub-commands from version.h, xen.h (CONSOLEIO_*, MMUEXT_*, UVMF_*), sched.h,
event_channel.h, grant_table.h and memory.h, all in pyvmm.pv.abi. Errors are
negative errno values as Xen returns them (xen/include/public/errno.h).

Responsibility: dispatch one hypercall from one vCPU to the module that owns its
concept (event_channel, grant_table, memory_op, pv_mmu, multicall) or run the small
ones here (xen_version, console_io, sched_op, set_timer_op), and turn whatever a
hostile guest can provoke (bad pointers, unknown numbers or commands, refused
operations) into the Xen error code, so the VMM and the other domains carry on.

Invariants:
- ``call()`` never raises for guest input: a bad pointer is -EFAULT, an unknown
  number -ENOSYS, a refused operation its Xen code; only a shutdown request is
  returned as a handlers.Shutdown instead of a RAX value;
- arguments C declares as ``int``/``unsigned int`` use the low 32 bits of their
  register, as the C ABI does;
- grant_table_op and event_channel_op read their argument structs through the
  calling vCPU's page tables: for the duration of the call the domain's ``access``
  is a ``LinearAccess`` on ``vm`` (pyvmm runs one hypercall at a time);
- a ``vm`` without a PV domain (``vm.domain`` absent or None: a guest booted without
  the PV platform) gets -ENOSYS for every hypercall that needs one.

Upcalls: hvm_op(HVMOP_set_param, HVM_PARAM_CALLBACK_IRQ) with the VECTOR delivery type
names the IDT vector the VMM injects when an event is pending for the vCPU (Xen's
"callback vector" ABI, hvm/params.h); the value is kept in ``domain.upcall_vector``.

Not provided (-ENOSYS): CONSOLEIO_read (the vCPU has no console input to give),
XENVER_build_id, SCHEDOP_remote_shutdown, shutdown_code and watchdog. Shutdown
reasons suspend and soft_reset are refused with -EINVAL (pyvmm cannot resume a
suspended guest in place; the lab guest checks this answer).
"""

from typing import Protocol

from pyvmm.errors import GuestFault, GuestMemoryError, XenOpError
from pyvmm.pv import abi, event_channel, grant_table, memory_op, multicall, pv_mmu

# Module-level names: ``abi.__HYPERVISOR_*`` would be name-mangled inside a class body.
HYPERVISOR_mmu_update = abi.__HYPERVISOR_mmu_update
HYPERVISOR_memory_op = abi.__HYPERVISOR_memory_op
HYPERVISOR_multicall = abi.__HYPERVISOR_multicall
HYPERVISOR_set_timer_op = abi.__HYPERVISOR_set_timer_op
HYPERVISOR_update_va_mapping = abi.__HYPERVISOR_update_va_mapping
HYPERVISOR_xen_version = abi.__HYPERVISOR_xen_version
HYPERVISOR_console_io = abi.__HYPERVISOR_console_io
HYPERVISOR_grant_table_op = abi.__HYPERVISOR_grant_table_op
HYPERVISOR_mmuext_op = abi.__HYPERVISOR_mmuext_op
HYPERVISOR_sched_op = abi.__HYPERVISOR_sched_op
HYPERVISOR_event_channel_op = abi.__HYPERVISOR_event_channel_op
HYPERVISOR_hvm_op = abi.__HYPERVISOR_hvm_op
XENVER_version = abi.XENVER_version
CONSOLEIO_write = abi.CONSOLEIO_write
SCHEDOP_shutdown = abi.SCHEDOP_shutdown
SHUTDOWN_poweroff, SHUTDOWN_reboot, SHUTDOWN_suspend, SHUTDOWN_crash = 0, 1, 2, 3
EINVAL, EFAULT, ENOSYS = abi.EINVAL, abi.EFAULT, abi.ENOSYS
CONSOLE_IO_MAX = 1 << 16
POLL_MAX_PORTS = 128                       # Xen refuses longer SCHEDOP_poll lists
TIMER_FAR_NS = 1 << 50                     # ~13 days: further is a guest's wrapped deadline
TIMER_FALLBACK_NS = 100_000_000            # such a deadline fires in 100 ms instead
MASK64 = (1 << 64) - 1
UPCALL_VECTOR_MIN = 0x10                   # vectors 0..15 are exceptions: not an upcall vector
_U32 = 0xFFFF_FFFF

DEFAULT_FEATURES = (abi.XENFEAT_supervisor_mode_kernel, abi.XENFEAT_mmu_pt_update_preserve_ad)
"""XENFEAT_* bits reported by XENVER_get_features: the guest kernel runs at CPL 0
(pyvmm cannot drop a PV kernel to ring 1 or 3), and MMU_PT_UPDATE_PRESERVE_AD exists."""


class PvVcpu(Protocol):
    """What a hypercall sees of the calling vCPU (the VMM's Vcpu provides it; tests fake it).

    Guest pointers are guest-virtual: ``read_linear``/``write_linear`` go through the
    guest's page tables and raise GuestFault or GuestMemoryError on a bad pointer.
    """

    domain: object          # pv.domain.Domain of the caller
    domains: object         # the DomainTable
    vcpu_id: int            # index of this vCPU in its domain (vcpu_info slot)

    def read_linear(self, va: int, n: int) -> bytes: ...
    def write_linear(self, va: int, data: bytes) -> None: ...
    def console_write(self, data: bytes) -> None: ...
    def paging(self): ...                         # a pagewalk.Paging of CR0/CR3/CR4/EFER
    def flush_tlb(self, address=None) -> None: ...
    def load_cr3(self, value: int) -> None: ...   # MMUEXT_NEW_BASEPTR
    def system_time_ns(self) -> int: ...
    def set_timer(self, deadline_ns: int) -> None: ...   # 0 cancels; fires VIRQ_TIMER
    def yield_cpu(self) -> None: ...
    def block(self) -> None: ...                  # sleep until an event is pending here
    def poll(self, ports, deadline_ns: int) -> None: ...
    def frames_removed(self, gfns) -> None: ...   # after a balloon change
    def frames_added(self, gfns) -> None: ...


class LinearAccess:
    """A domain accessor (PhysicalAccess's two methods) through ``vm``'s page tables."""

    def __init__(self, vm):
        self.vm = vm

    def copy_from_guest(self, addr, length):
        try:
            return self.vm.read_linear(addr, length)
        except GuestFault as fault:
            raise GuestMemoryError(f"guest pointer {addr:#x}+{length:#x}: {fault}") from None

    def copy_to_guest(self, addr, data):
        try:
            self.vm.write_linear(addr, bytes(data))
        except GuestFault as fault:
            raise GuestMemoryError(f"guest pointer {addr:#x}+{len(data):#x}: {fault}") from None


def _through_guest_pointers(vm, op, *args):
    """``op(domain, *args)`` with the domain's accessor reading and writing guest-linear
    pointers through ``vm``'s page tables (a plain call: a generator-based context
    manager cost ~1.5 us of every event-channel and grant hypercall)."""
    domain = vm.domain
    saved = domain.access
    domain.access = LinearAccess(vm)
    try:
        return op(domain, *args)
    finally:
        domain.access = saved


def _err(errno):
    return -errno


def _c_string(text, size):
    data = text.encode()[:size - 1]
    return data.ljust(size, b"\0")


class Hypercalls:
    """Dispatches hypercalls; ``call(vm, number, args)`` returns the RAX value, or a
    handlers.Shutdown for a shutdown request. ``version_word`` is XENVER_version's
    answer (major << 16 | minor)."""

    def __init__(self, version_word, *, extraversion=".0-pyvmm", changeset="unavailable",
                 capabilities="xen-3.0-x86_64", features=DEFAULT_FEATURES,
                 guest_handle=bytes(abi.XEN_DOMAIN_HANDLE_LEN)):
        self.version_word = version_word
        self.extraversion = extraversion
        self.changeset = changeset
        self.capabilities = capabilities
        self.feature_bits = sum(1 << f for f in features)
        self.guest_handle = bytes(guest_handle)
        self._multicall = multicall.MulticallState()
        # number -> (name, handler, needs a PV domain)
        self.table = {
            HYPERVISOR_mmu_update: ("mmu_update", self.mmu_update, True),
            HYPERVISOR_memory_op: ("memory_op", self.memory_op, True),
            HYPERVISOR_multicall: ("multicall", self.multicall, False),
            HYPERVISOR_update_va_mapping: ("update_va_mapping", self.update_va_mapping, True),
            HYPERVISOR_set_timer_op: ("set_timer_op", self.set_timer_op, False),
            HYPERVISOR_xen_version: ("xen_version", self.xen_version, False),
            HYPERVISOR_console_io: ("console_io", self.console_io, False),
            HYPERVISOR_grant_table_op: ("grant_table_op", self.grant_table_op, True),
            HYPERVISOR_mmuext_op: ("mmuext_op", self.mmuext_op, True),
            HYPERVISOR_sched_op: ("sched_op", self.sched_op, False),
            HYPERVISOR_event_channel_op: ("event_channel_op", self.event_channel_op, True),
            HYPERVISOR_hvm_op: ("hvm_op", self.hvm_op, True),
        }

    def name(self, number):
        entry = self.table.get(number)
        return entry[0] if entry else "unknown"

    def call(self, vm, number, args):
        """Run hypercall ``number`` with the five argument registers ``args``."""
        result = self._invoke(vm, number, args)
        return result & MASK64 if isinstance(result, int) else result

    def _invoke(self, vm, number, args):
        entry = self.table.get(number)
        if entry is None:
            return _err(ENOSYS)
        _, handler, needs_domain = entry
        if needs_domain and getattr(vm, "domain", None) is None:
            return _err(ENOSYS)
        try:
            return handler(vm, *args)
        except (GuestFault, GuestMemoryError):
            return _err(EFAULT)
        except XenOpError as exc:
            return exc.code

    # --- xen_version -------------------------------------------------------------------

    def xen_version(self, vm, cmd, arg=0, *_):
        cmd &= _U32
        if cmd == abi.XENVER_version:
            return self.version_word
        if cmd == abi.XENVER_pagesize:
            return abi.PAGE_SIZE
        strings = {
            abi.XENVER_extraversion: (self.extraversion, abi.XEN_EXTRAVERSION_LEN),
            abi.XENVER_capabilities: (self.capabilities, abi.XEN_CAPABILITIES_INFO_LEN),
            abi.XENVER_changeset: (self.changeset, abi.XEN_CHANGESET_INFO_LEN),
        }
        if cmd in strings:
            vm.write_linear(arg, _c_string(*strings[cmd]))
            return 0
        if cmd == abi.XENVER_compile_info:
            vm.write_linear(arg, abi.xen_compile_info.pack(
                compiler=_c_string("pyvmm (Python)", 64), compile_by=_c_string("pyvmm", 16),
                compile_domain=bytes(32), compile_date=bytes(32)))
            return 0
        if cmd == abi.XENVER_platform_parameters:
            vm.write_linear(arg, abi.xen_platform_parameters.pack(
                virt_start=abi.HYPERVISOR_VIRT_START))
            return 0
        if cmd == abi.XENVER_get_features:
            layout = abi.xen_feature_info
            info = layout.unpack(vm.read_linear(arg, layout.size))
            if info["submap_idx"] >= abi.XENFEAT_NR_SUBMAPS:
                return _err(EINVAL)
            vm.write_linear(arg, layout.pack(submap_idx=info["submap_idx"],
                                             submap=self.feature_bits))
            return 0
        if cmd == abi.XENVER_guest_handle:
            vm.write_linear(arg, self.guest_handle)
            return 0
        if cmd == abi.XENVER_commandline:
            domain = getattr(vm, "domain", None)
            if domain is None or not domain.privileged:
                return _err(abi.EPERM)
            vm.write_linear(arg, bytes(abi.XEN_COMMANDLINE_LEN))   # pyvmm has no command line
            return 0
        return _err(ENOSYS)

    # --- console_io --------------------------------------------------------------------

    def console_io(self, vm, cmd, count, buf, *_):
        if cmd & _U32 != CONSOLEIO_write:
            return _err(ENOSYS)
        if count > CONSOLE_IO_MAX:
            return _err(EINVAL)
        data = vm.read_linear(buf, count)
        vm.console_write(data)
        return count

    # --- sched_op / set_timer_op -------------------------------------------------------

    def sched_op(self, vm, cmd, arg=0, *_):
        cmd &= _U32
        if cmd == abi.SCHEDOP_yield:
            vm.yield_cpu()
            return 0
        if cmd == abi.SCHEDOP_block:
            return self._block(vm)
        if cmd == abi.SCHEDOP_shutdown:
            return self._shutdown(vm, arg)
        if cmd == abi.SCHEDOP_poll:
            return self._poll(vm, arg)
        return _err(ENOSYS)

    def _block(self, vm):
        """SCHEDOP_block: enable upcalls, then sleep unless an event is already pending."""
        domain = getattr(vm, "domain", None)
        if domain is not None:
            base = vm.vcpu_id * abi.vcpu_info.size
            domain.shared_info()[base + abi.vcpu_info.offsetof("evtchn_upcall_mask")] = 0
            if domain.evtchn.upcall_pending(vm.vcpu_id):
                return 0
        vm.block()
        return 0

    def _shutdown(self, vm, arg):
        from pyvmm.cpu.handlers import Shutdown
        reason = int.from_bytes(vm.read_linear(arg, abi.sched_shutdown.size), "little")
        if reason == SHUTDOWN_poweroff:
            return Shutdown(0, "guest powered off (SCHEDOP_shutdown poweroff)")
        if reason == SHUTDOWN_reboot:
            return Shutdown(0, "guest asked for a reboot (SCHEDOP_shutdown reboot); pyvmm stops")
        if reason == SHUTDOWN_crash:
            return Shutdown(1, "guest reported a crash (SCHEDOP_shutdown crash)")
        if reason == abi.SHUTDOWN_watchdog:
            return Shutdown(1, "guest's watchdog fired (SCHEDOP_shutdown watchdog)")
        return _err(EINVAL)             # suspend, soft_reset, unknown reasons

    def _poll(self, vm, arg):
        """SCHEDOP_poll: return at once if a listed port is pending, else sleep in vm.poll."""
        domain = getattr(vm, "domain", None)
        if domain is None:
            return _err(ENOSYS)
        layout = abi.sched_poll
        req = layout.unpack(vm.read_linear(arg, layout.size))
        nr = req["nr_ports"]
        if nr > POLL_MAX_PORTS:
            return _err(EINVAL)
        raw = vm.read_linear(req["ports"], 4 * nr) if nr else b""
        ports = [int.from_bytes(raw[i:i + 4], "little") for i in range(0, len(raw), 4)]
        if any(p >= domain.evtchn.max_ports for p in ports):
            return _err(EINVAL)
        if any(domain.evtchn.is_pending(p) for p in ports):
            return 0
        vm.poll(ports, req["timeout"])
        return 0

    def set_timer_op(self, vm, timeout, *_):
        """set_timer_op(deadline): one-shot VIRQ_TIMER at system time ``deadline`` ns; 0 cancels.

        As Xen, a deadline that wrapped negative or lies more than 2**50 ns ahead (a
        guest's wrapped jiffies) fires 100 ms from now instead.
        """
        deadline = timeout - (1 << 64) if timeout >> 63 else timeout
        if deadline == 0:
            vm.set_timer(0)
            return 0
        now = vm.system_time_ns()
        if deadline < 0 or deadline - now >= TIMER_FAR_NS:
            deadline = now + TIMER_FALLBACK_NS
        vm.set_timer(deadline)
        return 0

    # --- hvm_op: the upcall vector ------------------------------------------------------

    def hvm_op(self, vm, cmd, arg, *_):
        """HVMOP_set_param / HVMOP_get_param of HVM_PARAM_CALLBACK_IRQ for the caller.

        Only the vector delivery type exists (a PV guest here has no GSI or PCI INTx):
        ``value = HVM_PARAM_CALLBACK_TYPE_VECTOR << 56 | vector`` with a vector of
        0x10..0xFF; value 0 turns upcalls off. Other parameters give -EINVAL, another
        domain -EPERM (only domain 0 may set them for others), other commands -ENOSYS.
        """
        cmd &= _U32
        if cmd not in (abi.HVMOP_set_param, abi.HVMOP_get_param):
            return _err(ENOSYS)
        layout = abi.xen_hvm_param
        raw = vm.read_linear(arg, layout.size)
        op = layout.unpack(raw)
        target = vm.domain.resolve(op["domid"])
        if target is None:
            return _err(abi.ESRCH)
        if target is not vm.domain and not vm.domain.privileged:
            return _err(abi.EPERM)
        if op["index"] != abi.HVM_PARAM_CALLBACK_IRQ:
            return _err(EINVAL)
        if cmd == abi.HVMOP_get_param:
            vector = target.upcall_vector
            value = 0 if vector is None else abi.HVM_PARAM_CALLBACK_TYPE_VECTOR << abi.HVM_PARAM_CALLBACK_TYPE_SHIFT | vector
            vm.write_linear(arg, layout.pack(domid=op["domid"], index=op["index"], value=value))
            return 0
        value = op["value"]
        if value == 0:
            target.upcall_vector = None
            return 0
        kind, vector = value >> abi.HVM_PARAM_CALLBACK_TYPE_SHIFT, value & ((1 << abi.HVM_PARAM_CALLBACK_TYPE_SHIFT) - 1)
        if kind != abi.HVM_PARAM_CALLBACK_TYPE_VECTOR or not UPCALL_VECTOR_MIN <= vector <= 0xFF:
            return _err(EINVAL)
        target.upcall_vector = vector
        return 0

    # --- the concepts with their own module ----------------------------------------------

    def event_channel_op(self, vm, cmd, arg, *_):
        return _through_guest_pointers(vm, event_channel.event_channel_op, cmd & _U32, arg)

    def grant_table_op(self, vm, cmd, uop, count, *_):
        return _through_guest_pointers(vm, grant_table.grant_table_op, cmd & _U32, uop, count)

    def memory_op(self, vm, cmd, arg, *_):
        return memory_op.memory_op(vm, cmd, arg)

    def multicall(self, vm, call_list, nr_calls, *_):
        return multicall.multicall(vm, self._multicall, self._invoke, call_list, nr_calls)

    def mmu_update(self, vm, reqs, count, pdone, foreigndom, *_):
        return pv_mmu.mmu_update(vm, reqs, count, pdone, foreigndom & _U32)

    def update_va_mapping(self, vm, va, val, flags, *_):
        return pv_mmu.update_va_mapping(vm, va, val, flags)

    def mmuext_op(self, vm, uops, count, pdone, foreigndom, *_):
        return pv_mmu.mmuext_op(vm, uops, count, pdone, foreigndom & _U32)
