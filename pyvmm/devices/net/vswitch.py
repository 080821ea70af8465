"""A learning Ethernet switch connecting the vifs of one pyvmm and its host endpoints.

Responsibility: ports, a MAC table, and forwarding as a transparent bridge does
(IEEE 802.1D, 7.7-7.8 without spanning tree or ageing timers): each frame that
enters a port teaches the table that its source address lives behind that port;
a frame to a known unicast address goes out of that port only, and one to a
group address (broadcast, multicast) or to an unknown address goes out of every
other port (flooding). Per-port counters record frames and bytes each way and
the frames a port's device refused.

A port's device is anything with ``deliver(frame) -> bool`` (a Netback, a
UdpEndpoint); ``attach(device, name)`` returns the ``SwitchPort`` through which that
device sends frames in (``port.send(frame)``).

Invariants:
- a frame never leaves through the port it entered (a unicast frame whose
  destination was learned on its ingress port is filtered and counted);
- group source addresses are never learned; the table holds at most
  ``max_macs`` entries, so a device that sends from endless made-up addresses
  only makes the switch flood, never grow without bound; a known address that
  moves is re-learned on its new port;
- frames shorter than an Ethernet header are counted (``runts``) and dropped;
- a detached port leaves the table and is never delivered to again.
"""

from pyvmm.devices.net.ethernet import ETH_HLEN, is_group
from pyvmm.errors import ConfigError

__all__ = ["VSwitch", "SwitchPort"]

_COUNTERS = ("in_frames", "in_bytes", "out_frames", "out_bytes", "out_refused")


class SwitchPort:
    """One port: ``device`` receives frames; ``send(frame)`` hands the switch a frame."""

    def __init__(self, switch, number, name, device):
        self.switch = switch
        self.number = number
        self.name = name
        self.device = device
        self.attached = True
        self.stats = dict.fromkeys(_COUNTERS, 0)

    def send(self, frame):
        """A frame entering the switch through this port; returns the ports it left by."""
        return self.switch.forward(self, frame)

    def detach(self):
        self.switch.detach(self)

    def __repr__(self):
        return f"SwitchPort({self.switch.name}:{self.number} {self.name})"


class VSwitch:
    """A learning switch named ``name`` (``--net switch=NAME``)."""

    def __init__(self, name="sw0", max_macs=1024):
        if max_macs < 1:
            raise ConfigError(f"switch {name}: max_macs {max_macs} must be at least 1")
        self.name = name
        self.max_macs = max_macs
        self.ports = []
        self.macs = {}                 # 6-byte address -> SwitchPort
        self._numbers = 0
        self.stats = {"runts": 0, "filtered": 0, "flooded": 0, "table_full": 0}

    def attach(self, device, name=None):
        """Add a port for ``device`` (it must have ``deliver(frame)``); returns the SwitchPort."""
        if not callable(getattr(device, "deliver", None)):
            raise ConfigError(f"switch {self.name}: {device!r} has no deliver(frame) to receive frames")
        port = SwitchPort(self, self._numbers, name or f"port{self._numbers}", device)
        self._numbers += 1
        self.ports.append(port)
        return port

    def detach(self, port):
        """Remove ``port`` and forget every address learned on it (idempotent)."""
        if port in self.ports:
            self.ports.remove(port)
        port.attached = False
        for mac in [mac for mac, p in self.macs.items() if p is port]:
            del self.macs[mac]

    def lookup(self, mac):
        """The port ``mac`` was learned on, or None."""
        return self.macs.get(bytes(mac))

    def _learn(self, src, port):
        if is_group(src):
            return
        known = self.macs.get(src)
        if known is port:
            return
        if known is None and len(self.macs) >= self.max_macs:
            self.stats["table_full"] += 1
            return
        self.macs[src] = port

    def forward(self, ingress, frame):
        """Learn from and forward one frame that entered ``ingress``; the ports it left by."""
        if not ingress.attached:
            return []
        ingress.stats["in_frames"] += 1
        ingress.stats["in_bytes"] += len(frame)
        if len(frame) < ETH_HLEN:
            self.stats["runts"] += 1
            return []
        frame = bytes(frame)
        dst, src = frame[:6], frame[6:12]
        self._learn(src, ingress)
        if is_group(dst) or dst not in self.macs:
            self.stats["flooded"] += 1
            out = [p for p in self.ports if p is not ingress]
        elif self.macs[dst] is ingress:
            self.stats["filtered"] += 1
            return []
        else:
            out = [self.macs[dst]]
        for port in out:
            self._output(port, frame)
        return out

    @staticmethod
    def _output(port, frame):
        if port.device.deliver(frame):
            port.stats["out_frames"] += 1
            port.stats["out_bytes"] += len(frame)
        else:
            port.stats["out_refused"] += 1
