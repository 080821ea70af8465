"""A host endpoint: Ethernet frames carried one per UDP datagram between two pyvmm processes.

Responsibility: the wire format of QEMU's ``-netdev dgram`` / ``-netdev socket,udp``
(each datagram's payload is exactly one Ethernet frame, no header, no FCS) over a
UDP socket bound at ``local`` that sends to ``remote``; parsing and checking the
``HOST:PORT`` addresses; a switch port (``deliver(frame)`` sends a frame out,
``poll()`` brings received frames in).

Receiving is a poll method, not a thread: every other device, netback included,
runs on the VMM's one thread between guest exits, and a receive thread would
have to lock the switch, every netback and guest memory against it. The VMM's
loop (or a test) calls ``poll(timeout)``, which waits up to ``timeout`` seconds for
the first datagram and then takes what is queued, up to ``budget`` frames;
``fileno()`` lets a loop ``select()`` on several endpoints.

Invariants:
- only datagrams from the configured remote address are accepted (others are
  counted in ``stats['foreign']``), and only those that hold a whole Ethernet
  header and at most ``max_frame`` bytes (others: ``stats['bad']``);
- a send that fails (no peer listening yet: ECONNREFUSED; a full socket buffer)
  is counted in ``stats['tx_errors']`` and reported as a refused delivery, never
  raised: a missing peer must not stop the VMM;
- bad ``local``/``remote`` text, or a local address that cannot be bound, raises
  ConfigError naming the address;
- ``release()`` closes the socket and keeps the switch port (a live migration hands
  the address to the destination on the same host); until ``reclaim()`` binds it
  again, sends are refused and counted and ``poll`` takes nothing.
"""

import errno
import select
import socket

from pyvmm.devices.net.ethernet import ETH_HLEN
from pyvmm.errors import ConfigError

__all__ = ["UdpEndpoint", "parse_hostport", "MAX_DATAGRAM"]

MAX_DATAGRAM = 65535               # largest frame read at once; longer datagrams are truncated


def parse_hostport(text, what="address"):
    """``"127.0.0.1:5555"`` -> ("127.0.0.1", 5555) resolved to an IPv4 address."""
    host, sep, port = str(text).rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{what} {text!r} is not HOST:PORT with a port in 0..65535")
    try:
        infos = socket.getaddrinfo(host, int(port), socket.AF_INET, socket.SOCK_DGRAM)
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"{what} {text!r}: host {host!r} does not resolve to IPv4 ({err})") from None
    return infos[0][4]


class UdpEndpoint:
    """A switch port that exchanges frames with the UDP socket of another pyvmm.

    ``local`` is where this end listens (port 0 picks a free one: see ``local_address``);
    ``remote`` where frames are sent, and the only source accepted. ``remote`` may be
    None until ``set_remote`` names it (frames sent before are counted as tx_errors).
    """

    def __init__(self, local, remote=None, max_frame=MAX_DATAGRAM):
        self.local_text = local
        local_addr = parse_hostport(local, "local")
        self.remote = None
        if remote is not None:
            self.set_remote(remote)
        self.max_frame = max_frame
        self.port = None
        self.stats = dict.fromkeys(("tx_frames", "tx_bytes", "tx_errors", "rx_frames", "rx_bytes",
                                    "foreign", "bad"), 0)
        self._local_addr = local_addr
        self.sock = self._bind()

    def _bind(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind(self._local_addr)
        except OSError as err:
            sock.close()
            raise ConfigError(f"local {self.local_text!r}: cannot bind UDP socket ({err.strerror})") from None
        sock.setblocking(False)
        return sock

    @property
    def bound(self):
        """Is the socket open (not released or closed)?"""
        return self.sock.fileno() >= 0

    def release(self):
        """Let go of the local address (a live migration's destination binds it next):
        the socket is closed, datagrams queued on it are lost, frames to send are
        refused (counted) until ``reclaim``; the switch port stays."""
        self.sock.close()

    def reclaim(self):
        """Bind the local address again after ``release`` (the migration failed and the
        VM runs on here); ConfigError if someone else holds it now."""
        if not self.bound:
            self.sock = self._bind()

    def set_remote(self, remote):
        self.remote = parse_hostport(remote, "remote")

    @property
    def local_address(self):
        """The bound (host, port), with the real port when ``local`` asked for port 0."""
        return self.sock.getsockname()

    def connect_to(self, switch, name=None):
        """Attach this endpoint to ``switch``; received frames enter it through the new port."""
        self.port = switch.attach(self, name or f"udp:{self.local_text}")
        return self.port

    def fileno(self):
        return self.sock.fileno()

    def deliver(self, frame):
        """Send ``frame`` to the remote end; False (and counted) if it could not be sent."""
        if self.remote is None or self.sock.fileno() < 0:
            self.stats["tx_errors"] += 1
            return False
        try:
            self.sock.sendto(frame, self.remote)
        except OSError:
            self.stats["tx_errors"] += 1
            return False
        self.stats["tx_frames"] += 1
        self.stats["tx_bytes"] += len(frame)
        return True

    def poll(self, timeout=0.0, budget=64):
        """Take up to ``budget`` datagrams into the switch; waits up to ``timeout`` s for the first.

        Returns the number of frames handed to the switch.
        """
        if self.sock.fileno() < 0:
            return 0
        if timeout and not select.select([self.sock], [], [], timeout)[0]:
            return 0
        taken = 0
        for _ in range(budget):
            try:
                data, source = self.sock.recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                break
            except OSError as err:
                # An ICMP port-unreachable for an earlier send surfaces here on Linux.
                if err.errno == errno.ECONNREFUSED:
                    self.stats["tx_errors"] += 1
                    continue
                raise
            if source != self.remote:
                self.stats["foreign"] += 1
                continue
            if not ETH_HLEN <= len(data) <= self.max_frame:
                self.stats["bad"] += 1
                continue
            self.stats["rx_frames"] += 1
            self.stats["rx_bytes"] += len(data)
            if self.port is not None:
                self.port.send(data)
            taken += 1
        return taken

    def close(self):
        if self.port is not None:
            self.port.detach()
            self.port = None
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
