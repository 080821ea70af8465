"""One error hierarchy for pyvmm.

Every message says what was wrong and with which input (a file name, a port, an
address), so the CLI can print it as one line and exit with status 2.
"""


class PyvmmError(Exception):
    """Base class of every error pyvmm raises on purpose."""


class ConfigError(PyvmmError):
    """A VM configuration that cannot be built (bad memory size, unknown option)."""


class BadImageError(PyvmmError):
    """A kernel, initrd or disk image file that is malformed or does not fit.

    ``path`` names the file; the message says what is wrong with it.
    """

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class GuestMemoryError(PyvmmError):
    """An access outside guest RAM (by the VMM on the guest's behalf)."""


class GuestFault(PyvmmError):
    """A fault the guest must see (an architectural exception to inject).

    Raised by root-mode code (page walker, instruction emulation, MSR/CR checks)
    and turned into an injected exception by the run loop.
    """

    def __init__(self, vector, error_code=None, cr2=None, why=""):
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2
        self.why = why
        super().__init__(f"guest fault vector {vector} error_code={error_code} cr2={cr2} {why}")


class GuestStopped(PyvmmError):
    """The guest was stopped by the VMM (triple fault, halted with IF=0, ...)."""


class EngineError(PyvmmError):
    """The CPU engine (Unicorn) refused an operation the VMM asked of it."""


class RingError(PyvmmError):
    """A shared ring (io/ring.h, xs_wire.h) whose peer broke the protocol.

    Raised when a peer's index is impossible (a producer further ahead than the
    ring holds); the backend disconnects that peer and nothing else is touched.
    """


class XenstoreError(PyvmmError):
    """A xenstore operation refused with a Xen errno name (``ENOENT``, ``EACCES`` ...).

    ``errno_name`` is the string xenstore puts on the wire in an XS_ERROR reply.
    """

    def __init__(self, errno_name, what):
        self.errno_name = errno_name
        self.what = what
        super().__init__(f"xenstore {errno_name}: {what}")


class DiskImageError(PyvmmError):
    """A disk image operation that cannot be done (out of range, read-only, closed).

    Unlike BadImageError the file itself is fine; the request was wrong.
    ``path`` names the image.
    """

    def __init__(self, path, problem):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class MigrationError(PyvmmError):
    """Migration cannot go on with these inputs (a RAM copy of the wrong size, ...)."""


class MigrationStreamError(MigrationError):
    """A migration stream (or a page delta in it) that is malformed, truncated,
    corrupted, or from a newer format version; the message says which and where."""


class FrameError(PyvmmError):
    """A guest frame operation refused: a gfn the domain does not own, one still
    mapped by another domain, outside its RAM (``gfn`` names the frame)."""

    def __init__(self, domid, gfn, problem):
        self.domid = domid
        self.gfn = gfn
        super().__init__(f"domain {domid} frame {gfn:#x}: {problem}")


class XenOpError(PyvmmError):
    """A Xen operation refused with the code Xen would return (``code`` < 0).

    Raised by the Python-side API of grant tables and event channels; the
    hypercall entry points turn it into the return value or status field.
    """

    def __init__(self, code, what):
        self.code = code
        self.what = what
        super().__init__(f"{what} (Xen code {code})")


class GrantError(XenOpError):
    """A grant-table operation refused: ``code`` is a GNTST_* status (grant_table.h)."""


class EventChannelError(XenOpError):
    """An event-channel operation refused: ``code`` is -errno (xen/errno.h)."""


class ControlError(PyvmmError):
    """The control socket cannot be used: no socket at the path, nothing listening,
    a path that is not ours to replace, a peer that does not speak QMP, a lost
    connection. The message names the socket path."""


class ControlCommandError(ControlError):
    """A control command answered with a QMP error (qemu docs/interop/qmp-spec.rst,
    "Error"): ``error_class`` is the QMP class (``GenericError``,
    ``CommandNotFound``), ``desc`` the human-readable reason, ``command`` the
    command it answers when known."""

    def __init__(self, error_class, desc, command=None):
        self.error_class = error_class
        self.desc = desc
        self.command = command
        where = f"{command}: " if command else ""
        super().__init__(f"{where}{error_class}: {desc}")


class PacketError(PyvmmError):
    """A network frame or packet that is too short or whose fields contradict each
    other (devices/net/ethernet.py); the message names the field."""


class SchedulerError(PyvmmError):
    """A scheduler request refused (a weight or cap out of range, an unknown or
    duplicate domain, a vCPU that answered ``run_slice`` with something that is
    not ``(used_ns, state)``); the message names the domain and the value."""


class PacketError(PyvmmError):
    """A network frame or packet that is too short or whose fields contradict each
    other (devices/net/ethernet.py); the message names the field."""
