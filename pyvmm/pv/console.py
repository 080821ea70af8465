"""The PV console ring and its domain-0 backend (xen/include/public/io/console.h).

Responsibility: the ``xencons_interface`` page layout (``in[1024]``, ``out[2048]``,
then ``in_cons, in_prod, out_cons, out_prod`` as 32-bit ``XENCONS_RING_IDX``) and
``ConsoleBackend``, which domain 0 runs on every event from the guest's console
channel: it takes the bytes between ``out_cons`` and ``out_prod``, hands them to the
machine's console writer, advances ``out_cons`` and notifies the guest.

Invariants:
- indices are free-running 32-bit counters; a byte lives at ``idx & (size - 1)``
  (``MASK_XENCONS_IDX``);
- a guest whose ``out_prod`` is more than 2048 bytes ahead of ``out_cons`` broke the
  protocol: the backend stops serving it (``broken`` says why), writes nothing and
  leaves the ring as the guest left it; the VMM carries on;
- the backend only ever moves ``out_cons`` (and never ``in_*``: pyvmm gives PV
  guests no console input).
"""

import struct

from pyvmm.errors import RingError
from pyvmm.migrate.state import StateFields
from pyvmm.pv.cstruct import Array, Struct, u8, u32

XENCONS_IN_SIZE = 1024
XENCONS_OUT_SIZE = 2048

# struct xencons_interface (io/console.h; ``char`` rings have uint8_t's layout)
XENCONS_INTERFACE = Struct("xencons_interface", [
    ("in", Array(u8, XENCONS_IN_SIZE)), ("out", Array(u8, XENCONS_OUT_SIZE)),
    ("in_cons", u32), ("in_prod", u32), ("out_cons", u32), ("out_prod", u32)])

LAYOUTS = [("struct xencons_interface", XENCONS_INTERFACE)]

_U32 = struct.Struct("<I")
_OUT = XENCONS_INTERFACE.offsetof("out")
_OUT_CONS = XENCONS_INTERFACE.offsetof("out_cons")
_OUT_PROD = XENCONS_INTERFACE.offsetof("out_prod")
_IDX_MASK = 0xFFFF_FFFF


class ConsoleBackend:
    """Domain 0's side of one guest's console page.

    ``page`` is the writable 4 KiB of the ring frame, ``write(bytes)`` the machine's
    console, ``notify()`` signals the guest's console event channel.
    """

    def __init__(self, page, write, notify):
        view = memoryview(page).cast("B")
        if view.readonly or len(view) < XENCONS_INTERFACE.size:
            raise RingError(f"console ring page must be writable and hold {XENCONS_INTERFACE.size} "
                            f"bytes (got {len(view)}, readonly={view.readonly})")
        self.view = view
        self.write = write
        self.notify = notify
        self.broken = None
        self.bytes_out = 0

    def drain(self):
        """Copy out what the guest produced; returns the bytes (b"" when nothing or broken)."""
        if self.broken:
            return b""
        cons = _U32.unpack_from(self.view, _OUT_CONS)[0]
        prod = _U32.unpack_from(self.view, _OUT_PROD)[0]
        used = (prod - cons) & _IDX_MASK
        if used > XENCONS_OUT_SIZE:
            self.broken = (f"console ring: out_prod {prod:#x} is {used:#x} bytes ahead of out_cons "
                           f"{cons:#x}; the ring holds {XENCONS_OUT_SIZE}")
            return b""
        if not used:
            return b""
        start = cons & (XENCONS_OUT_SIZE - 1)
        first = min(used, XENCONS_OUT_SIZE - start)
        data = bytes(self.view[_OUT + start:_OUT + start + first]) + bytes(self.view[_OUT:_OUT + used - first])
        _U32.pack_into(self.view, _OUT_CONS, (cons + used) & _IDX_MASK)
        self.bytes_out += used
        self.write(data)
        self.notify()
        return data

    def on_event(self, port):
        """The event-channel callback (``EventChannels.set_notify``)."""
        self.drain()

    # --- save / restore: the ring itself is guest memory; this is domain 0's side ---

    def save(self):
        return {"broken": self.broken, "bytes_out": self.bytes_out}

    def check_state(self, state):
        """The checked (broken, bytes_out) of a save() value; MigrationStreamError if bad."""
        f = StateFields(state, "console backend")
        broken = f.raw("broken")
        result = (None if broken is None else f.text("broken"), f.uint("bytes_out", 1 << 64))
        f.done()
        return result

    def restore(self, state):
        self.broken, self.bytes_out = self.check_state(state)
