"""The I/O port bus: routes guest IN/OUT accesses to the device that claims the port.

Responsibility: own the map port -> device, refuse overlapping claims, and turn one
guest access (port, size 1/2/4) into the device calls that serve it, like a PC's ISA
bus does. Nothing here knows what any device does.

Devices are plain objects with a ``name`` attribute and two methods,
``io_read(port, size) -> int`` and ``io_write(port, size, value)``. A device may set
``io_sizes``: the access sizes it handles itself, for all its ports or as a mapping
port -> sizes; the default, also for ports missing from the mapping, is ``(1,)``
(byte registers).

Invariants:
- a port belongs to at most one device; ``register`` refuses any overlap with a
  ConfigError naming the port and both devices, and then claims nothing;
- the device that owns the *first* port of an access decides how it is served: if the
  size is in its ``io_sizes`` it gets the whole access at that port; otherwise the bus
  splits the access into byte accesses at consecutive ports, least significant byte
  first (little-endian, as an x86 IN/OUT of a 16/32-bit value on an 8-bit bus), each
  byte going to whoever owns its port. This happens here once, never in a device;
- an access whose first port nobody claims reads as all ones for its size (0xFF,
  0xFFFF, 0xFFFFFFFF) and a write to it is dropped (docs/platform.md, "I/O ports");
  each one is counted once, at its port, in ``unclaimed_reads``/``unclaimed_writes``;
- values passed to a device and returned to the guest are masked to the access size.
"""

from pyvmm.errors import ConfigError

ACCESS_SIZES = (1, 2, 4)
_MASKS = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF}
PORT_MASK = 0xFFFF  # x86 has a 64 KiB I/O space; a wide access at 0xFFFF wraps


class IoBus:
    """Port-mapped I/O space of the guest."""

    def __init__(self):
        self._owners = {}        # port -> (device, frozenset of native sizes)
        self.unclaimed_reads = {}   # port -> count
        self.unclaimed_writes = {}  # port -> count

    def register(self, device, ports=None):
        """Claim ``ports`` (an iterable of port numbers, default ``device.ports``)."""
        if ports is None:
            ports = device.ports
        ports = list(ports)
        for port in ports:
            if not 0 <= port <= PORT_MASK:
                raise ConfigError(f"I/O port {port:#x} of {device.name}: outside 0..0xffff")
            owner = self._owners.get(port)
            if owner is not None:
                raise ConfigError(
                    f"I/O port {port:#x}: {device.name} overlaps {owner[0].name}, which already claims it")
        if len(set(ports)) != len(ports):
            raise ConfigError(f"{device.name}: the same I/O port is listed twice")
        for port in ports:
            self._owners[port] = (device, _native_sizes(device, port))

    def device_at(self, port):
        """The device that claims ``port``, or None."""
        owner = self._owners.get(port & PORT_MASK)
        return owner[0] if owner else None

    def read(self, port, size):
        """Serve a guest IN of ``size`` bytes at ``port``; returns the value read."""
        port = _check(port, size)
        owner = self._owners.get(port)
        if owner is None:
            _count(self.unclaimed_reads, port)
            return _MASKS[size]
        device, sizes = owner
        if size in sizes:
            return device.io_read(port, size) & _MASKS[size]
        value = 0
        for i in range(size):
            value |= self._read_byte((port + i) & PORT_MASK) << (8 * i)
        return value

    def write(self, port, size, value):
        """Serve a guest OUT of ``value`` (``size`` bytes) at ``port``."""
        port = _check(port, size)
        value &= _MASKS[size]
        owner = self._owners.get(port)
        if owner is None:
            _count(self.unclaimed_writes, port)
            return
        device, sizes = owner
        if size in sizes:
            device.io_write(port, size, value)
            return
        for i in range(size):
            self._write_byte((port + i) & PORT_MASK, (value >> (8 * i)) & 0xFF)

    def _read_byte(self, port):
        owner = self._owners.get(port)
        if owner is None:
            _count(self.unclaimed_reads, port)
            return 0xFF
        return owner[0].io_read(port, 1) & 0xFF

    def _write_byte(self, port, value):
        owner = self._owners.get(port)
        if owner is None:
            _count(self.unclaimed_writes, port)
        else:
            owner[0].io_write(port, 1, value)


def _native_sizes(device, port):
    sizes = getattr(device, "io_sizes", (1,))
    if hasattr(sizes, "get"):
        sizes = sizes.get(port, (1,))
    return frozenset(sizes)


def _check(port, size):
    if size not in _MASKS:
        raise ValueError(f"I/O access size {size} at port {port:#x}: expected 1, 2 or 4")
    return port & PORT_MASK


def _count(counter, port):
    counter[port] = counter.get(port, 0) + 1
