"""Virtual network interfaces of a PV guest: ``--net`` specs, the toolstack's xenstore nodes, one netback each.

Responsibility: what a toolstack (libxl) does to give a PV guest its vifs, and
nothing of the netif protocol itself (that is netback.py):
- parse ``switch=NAME[,mac=M]`` and ``udp,local=HOST:PORT,remote=HOST:PORT[,mac=M]``
  (``NetSpec.parse``);
- connect every spec to the process's network before anything else is built
  (``HostNetwork.switch`` / ``udp_switch``: the UDP sockets are bound here, so a busy
  port fails the boot, not the guest);
- for vif *i*, create both xenbus directories (``device/vif/<i>`` owned by the guest,
  ``backend/vif/<domid>/<i>`` owned by domain 0) with libxl's keys (frontend: mac,
  handle; backend: mac, handle, type, bridge), and start a ``Netback`` in domain 0 on
  that switch, which follows the frontend's ``state`` to Connected and back
  (``attach_vifs``);
- on detach (the VM closes): each netback leaves its switch and stops (rings
  unmapped, event channel closed, watch removed).

MAC addresses: ``mac=`` if given, else one in QEMU's locally administered range
52:54:00 that is stable and distinct: ``52:54:00:<devid>:<domid high>:<domid low>``
on a switch, and ``52:54:00:<0x80|devid>:<local port high>:<local port low>`` for a
UDP vif (two pyvmm processes both run domain 1; their local ports differ).

Invariants: a bad spec raises ConfigError naming the ``--net`` text before any
xenstore node exists; a failure part way detaches the vifs already made; detaching
is idempotent.
"""

from dataclasses import dataclass
from typing import Optional

from pyvmm.devices.backend import close_all
from pyvmm.devices.net.endpoint import parse_hostport
from pyvmm.devices.net.ethernet import format_mac, is_group, parse_mac
from pyvmm.devices.net.netback import Netback
from pyvmm.devices.xenbus import create_device
from pyvmm.errors import ConfigError

__all__ = ["NetSpec", "Vif", "attach_vifs", "default_mac", "MAX_VIFS"]

MAX_VIFS = 16
_SWITCH_KEYS = ("mac",)
_UDP_KEYS = ("local", "remote", "mac")


@dataclass(frozen=True)
class NetSpec:
    """One ``--net``: the kind ("switch" or "udp"), where it connects, an optional MAC."""

    kind: str
    switch: Optional[str] = None
    local: Optional[str] = None
    remote: Optional[str] = None
    mac: Optional[bytes] = None

    @classmethod
    def parse(cls, text):
        """``switch=NAME[,mac=M]`` or ``udp,local=H:P,remote=H:P[,mac=M]`` (ConfigError
        naming the argument and the problem)."""
        if isinstance(text, NetSpec):
            return text
        if not isinstance(text, str) or not text:
            raise ConfigError(f"--net {text!r}: give switch=NAME[,mac=M] or "
                              f"udp,local=HOST:PORT,remote=HOST:PORT[,mac=M]")
        first, *options = text.split(",")
        if first == "udp":
            kind, known, values = "udp", _UDP_KEYS, {}
        elif first.startswith("switch="):
            kind, known, values = "switch", _SWITCH_KEYS, {"switch": first[len("switch="):]}
            if not values["switch"]:
                raise ConfigError(f"--net {text!r}: the switch name is empty")
        else:
            raise ConfigError(f"--net {text!r}: start with switch=NAME or udp")
        for opt in options:
            key, eq, value = opt.partition("=")
            if key not in known or not eq or not value:
                raise ConfigError(f"--net {text!r}: unknown or empty option {opt!r} "
                                  f"(known for {kind}: {', '.join(known)})")
            if key in values:
                raise ConfigError(f"--net {text!r}: {key}= given twice")
            values[key] = value
        if kind == "udp":
            for key in ("local", "remote"):
                if key not in values:
                    raise ConfigError(f"--net {text!r}: udp needs {key}=HOST:PORT")
                try:
                    parse_hostport(values[key], key)
                except ConfigError as err:
                    raise ConfigError(f"--net {text!r}: {err}") from None
        if "mac" in values:
            try:
                values["mac"] = parse_mac(values["mac"])
            except ConfigError as err:
                raise ConfigError(f"--net {text!r}: {err}") from None
            if is_group(values["mac"]):
                raise ConfigError(f"--net {text!r}: {format_mac(values['mac'])} is a group "
                                  f"(multicast) address; a vif needs a unicast one")
        return cls(kind, **values)


def default_mac(spec, domid, devid):
    """The vif's MAC when ``spec`` names none (see the module docstring)."""
    if spec.kind == "udp":
        port = parse_hostport(spec.local, "local")[1]
        return bytes([0x52, 0x54, 0x00, 0x80 | devid, port >> 8, port & 0xFF])
    return bytes([0x52, 0x54, 0x00, devid, domid >> 8 & 0xFF, domid & 0xFF])


class Vif:
    """Vif ``devid`` of guest ``frontend_domid`` on ``switch``: its xenstore directories
    and its Netback (started: InitWait; the guest's netfront does the rest)."""

    def __init__(self, backend_domain, client, frontend_domid, devid, mac, switch):
        self.devid = devid
        self.mac = bytes(mac)
        self.switch = switch
        mac_text = format_mac(self.mac)
        # libxl's keys (libxl_nic.c): what the vif is and where it is plugged in.
        backend_values = {"mac": mac_text, "handle": devid, "type": "vif", "bridge": switch.name}
        self.frontend_path, self.backend_path = create_device(
            client, "vif", frontend_domid, devid, backend_domain.domid, backend_values)
        client.write(f"{self.frontend_path}/mac", mac_text)
        client.write(f"{self.frontend_path}/handle", str(devid))
        self.netback = Netback(backend_domain, client, frontend_domid, devid, self.mac, switch)
        self.netback.start()

    @property
    def state(self):
        """The backend's xenbus state."""
        return self.netback.xenbus.state

    def close(self):
        """Take the vif off its switch and stop its backend; idempotent."""
        if self.netback is not None:
            netback, self.netback = self.netback, None
            netback.destroy()


def attach_vifs(pv, specs, network):
    """A Vif per spec (strings or NetSpecs) for ``pv``'s guest (a PvPlatform: ``dom0``,
    ``xs``, ``guest``) on ``network`` (a HostNetwork), vif 0, 1 ... in order. All or
    none: on failure the vifs made so far are detached."""
    specs = [NetSpec.parse(s) for s in specs]
    if len(specs) > MAX_VIFS:
        raise ConfigError(f"{len(specs)} vifs given; at most {MAX_VIFS}")
    domid = pv.guest.domid
    vifs = []
    try:
        for devid, spec in enumerate(specs):
            switch = (network.switch(spec.switch) if spec.kind == "switch"
                      else network.udp_switch(spec.local, spec.remote))
            mac = spec.mac or default_mac(spec, domid, devid)
            vifs.append(Vif(pv.dom0, pv.xs, domid, devid, mac, switch))
    except BaseException:
        close_all(vifs)
        raise
    return vifs


