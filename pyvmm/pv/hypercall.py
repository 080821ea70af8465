"""The hypercall table: Xen's numbering and x86-64 calling convention.

RAX holds the number, RDI, RSI, RDX, R10, R8 the arguments, RAX the result
(xen/include/public/arch-x86/xen-x86_64.h). Numbers from xen/include/public/xen.h;
command numbers from version.h, xen.h (CONSOLEIO_*) and sched.h. Errors are
negative errno values as Xen returns them (xen/include/public/errno.h).
"""

from pyvmm.errors import GuestFault, GuestMemoryError

HYPERVISOR_xen_version = 17
HYPERVISOR_console_io = 18
HYPERVISOR_sched_op = 29
XENVER_version = 0
CONSOLEIO_write = 0
SCHEDOP_shutdown = 2
SHUTDOWN_poweroff, SHUTDOWN_reboot, SHUTDOWN_suspend, SHUTDOWN_crash = 0, 1, 2, 3
EINVAL, EFAULT, ENOSYS = 22, 14, 38
CONSOLE_IO_MAX = 1 << 16


def _err(errno):
    return -errno & 0xFFFF_FFFF_FFFF_FFFF


class Hypercalls:
    """Dispatches hypercalls; ``call(vm, number, args)`` returns the RAX value, or a
    handlers.Shutdown for a shutdown request."""

    def __init__(self, version_word):
        self.version_word = version_word
        self.table = {
            HYPERVISOR_xen_version: ("xen_version", self.xen_version),
            HYPERVISOR_console_io: ("console_io", self.console_io),
            HYPERVISOR_sched_op: ("sched_op", self.sched_op),
        }

    def name(self, number):
        entry = self.table.get(number)
        return entry[0] if entry else "unknown"

    def call(self, vm, number, args):
        entry = self.table.get(number)
        if entry is None:
            return _err(ENOSYS)
        try:
            return entry[1](vm, *args)
        except (GuestFault, GuestMemoryError):
            return _err(EFAULT)

    def xen_version(self, vm, cmd, *_):
        if cmd == XENVER_version:
            return self.version_word
        return _err(ENOSYS)

    def console_io(self, vm, cmd, count, buf, *_):
        if cmd != CONSOLEIO_write:
            return _err(ENOSYS)
        if count > CONSOLE_IO_MAX:
            return _err(EINVAL)
        data = vm.read_linear(buf, count)
        vm.console_write(data)
        return count

    def sched_op(self, vm, cmd, arg, *_):
        from pyvmm.cpu.handlers import Shutdown
        if cmd != SCHEDOP_shutdown:
            return _err(ENOSYS)
        reason = int.from_bytes(vm.read_linear(arg, 4), "little")
        if reason == SHUTDOWN_poweroff:
            return Shutdown(0, "guest powered off (SCHEDOP_shutdown poweroff)")
        if reason == SHUTDOWN_reboot:
            return Shutdown(0, "guest asked for a reboot (SCHEDOP_shutdown reboot); pyvmm stops")
        if reason == SHUTDOWN_crash:
            return Shutdown(1, "guest reported a crash (SCHEDOP_shutdown crash)")
        return _err(EINVAL)
