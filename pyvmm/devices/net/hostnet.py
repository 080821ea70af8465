"""The host side of one pyvmm process's networks: named switches, UDP endpoints, waiting on them.

Responsibility: what ``--net`` options connect vifs to, shared by every domain of
the process (one ``HostNetwork`` per process; pv/hypervisor.py hands the same one to
each guest, a lone Machine makes its own):
- ``switch(name)``: the in-process VSwitch of that name, made on first use, so every
  vif given ``switch=NAME`` (in any domain) sits on the same switch;
- ``udp_switch(local, remote)``: a UdpEndpoint bound at ``local`` sending to
  ``remote`` on a switch of its own, which the vif then joins (two pyvmm processes
  talk like QEMU's ``-netdev dgram``);
- ``poll()``: bring in the datagrams queued on every endpoint (non-blocking), on the
  VMM's thread, from the run loop (Platform.tick) between guest slices;
- ``wait(timeout)``: sleep until a datagram arrives on any endpoint, ``wake()`` is
  called (from any thread) or ``timeout`` passes, then ``poll()``: a halted vCPU or an
  idle scheduler sleeps here instead of on a plain Event, so a frame from the other
  process wakes the guest it is for.

Invariants:
- endpoints are only read on the thread that calls ``poll``/``wait`` (the VMM's): a
  frame reaches netback, guest memory and the event channels only between guest
  slices, as every other device's work does;
- ``wake()`` never blocks and may be called any number of times from any thread;
- a local address given twice is refused (ConfigError) before a second socket is
  bound; ``close()`` closes every endpoint and is idempotent;
- an endpoint whose address was released (live migration) is neither polled nor
  waited on until it is reclaimed.
"""

import select
import socket

from pyvmm.devices.net.endpoint import UdpEndpoint
from pyvmm.devices.net.vswitch import VSwitch
from pyvmm.errors import ConfigError

__all__ = ["HostNetwork"]


class HostNetwork:
    """The switches and host endpoints of one pyvmm process."""

    def __init__(self):
        self.switches = {}             # name -> VSwitch (``switch=NAME``)
        self.endpoints = []            # UdpEndpoints, each on a switch of its own
        self._waker, self._wakee = socket.socketpair()
        for s in (self._waker, self._wakee):
            s.setblocking(False)

    @property
    def can_wake(self):
        """Can something outside the process (a datagram) wake a guest?"""
        return any(ep.bound for ep in self.endpoints)

    def endpoint(self, local):
        """The UdpEndpoint bound (or released) at ``local`` (the text ``udp_switch`` got)."""
        for ep in self.endpoints:
            if ep.local_text == local:
                return ep
        raise ConfigError(f"no udp endpoint at local={local}")

    def switch(self, name):
        """The switch called ``name`` (created the first time it is named)."""
        if not name:
            raise ConfigError("a switch needs a name (switch=NAME)")
        if name not in self.switches:
            self.switches[name] = VSwitch(name)
        return self.switches[name]

    def udp_switch(self, local, remote):
        """A new UdpEndpoint at ``local`` sending to ``remote``, on its own switch."""
        for ep in self.endpoints:
            if ep.local_text == local:
                raise ConfigError(f"udp local={local} is given twice: one endpoint per local address")
        endpoint = UdpEndpoint(local, remote)
        switch = VSwitch(f"udp:{local}")
        endpoint.connect_to(switch)
        self.endpoints.append(endpoint)
        return switch

    def poll(self):
        """Bring in what every endpoint has queued; returns the number of frames."""
        taken = 0
        for ep in self.endpoints:
            taken += ep.poll(0)
        return taken

    def wait(self, timeout):
        """Sleep until a datagram, a wake() or ``timeout`` seconds (None: no limit), then
        poll(); returns the number of frames brought in."""
        readable = select.select([self._wakee, *(ep for ep in self.endpoints if ep.bound)], [], [], timeout)[0]
        if self._wakee in readable:
            try:
                while self._wakee.recv(4096):
                    pass
            except BlockingIOError:
                pass
        return self.poll()

    def wake(self):
        """End a wait() early (any thread)."""
        try:
            self._waker.send(b"\0")
        except (BlockingIOError, OSError):
            pass                       # already pending, or closed: either way nobody sleeps on it

    def stats(self):
        """{endpoint local address: its counters} and {switch name: its counters}."""
        return {"endpoints": {ep.local_text: dict(ep.stats) for ep in self.endpoints},
                "switches": {name: dict(sw.stats) for name, sw in self.switches.items()}}

    def close(self):
        for ep in self.endpoints:
            ep.close()
        self.endpoints = []
        self._waker.close()
        self._wakee.close()
