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

Save/restore (docs/migration-stream.md, "Network interfaces"): ``Vif.save`` gives
the VIF record's state map: the spec (kind, switch or local/remote, MAC, device id)
and netback's connection, taken after the tx requests on the ring are served.
``restore_vifs`` checks every record first, then joins the restoring process's
network as the spec says (a UDP endpoint binds its local address: a busy one
refuses the restore, MigrationError) and builds each Vif without starting its
backend; ``Vif.restore`` then takes the connection up, once the guest's grant
table, event channels and xenstore home are back, and announces the MAC
(``Netback.announce``). Frames on the wire meanwhile may be lost, as Ethernet may
drop them; the rx requests the guest posted stay on its ring and are used next.
For a live migration on one host the source ``release``s a UDP vif's local address
after the save (the destination binds it when the devices arrive) and
``reclaim``s it if the migration fails.
"""

from dataclasses import dataclass
from typing import Optional

from pyvmm.devices.backend import close_all
from pyvmm.devices.net.endpoint import parse_hostport
from pyvmm.devices.net.ethernet import format_mac, is_group, parse_mac
from pyvmm.devices.net.netback import Netback
from pyvmm.devices.xenbus import create_device
from pyvmm.errors import ConfigError, MigrationError, MigrationStreamError
from pyvmm.migrate.state import StateFields

__all__ = ["NetSpec", "Vif", "attach_vifs", "restore_vifs", "check_vif_state", "default_mac", "MAX_VIFS"]

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


def check_vif_state(state, where="snapshot"):
    """(NetSpec with its MAC, devid) of a VIF record's state map (Vif.save()), its
    top-level fields checked (the backend's map is checked by Netback.restore)."""
    f = StateFields(state, f"{where} vif")
    kind = f.choice("kind", ["switch", "udp"])
    names = ("switch",) if kind == "switch" else ("local", "remote")
    for name in ("switch", "local", "remote"):
        if name not in names and f.raw(name) is not None:
            f.fail(name, f"set for a {kind} vif")
    values = {name: f.text(name, 255) for name in names}
    mac = f.blob("mac", 6)
    devid = f.uint("devid", MAX_VIFS)
    if not isinstance(f.raw("backend"), dict):
        f.fail("backend", "not a map")
    f.done()
    text = (f"switch={values['switch']}" if kind == "switch"
            else f"udp,local={values['local']},remote={values['remote']}") + f",mac={format_mac(mac)}"
    try:
        spec = NetSpec.parse(text)
    except ConfigError as err:
        raise MigrationStreamError(f"{where} vif {devid}: {err}") from None
    return spec, devid


class Vif:
    """Vif ``devid`` of guest ``frontend_domid`` on ``switch``: its xenstore directories
    and its Netback (started: InitWait; the guest's netfront does the rest; ``start``
    False, a restore, leaves it for ``restore``). ``spec`` is the NetSpec it was made
    from (saved in the VIF record); ``endpoint`` the UdpEndpoint of a UDP vif."""

    def __init__(self, backend_domain, client, frontend_domid, devid, mac, switch, spec, endpoint=None,
                 start=True):
        self.devid = devid
        self.mac = bytes(mac)
        self.switch = switch
        self.spec = spec
        self.endpoint = endpoint
        mac_text = format_mac(self.mac)
        # libxl's keys (libxl_nic.c): what the vif is and where it is plugged in.
        backend_values = {"mac": mac_text, "handle": devid, "type": "vif", "bridge": switch.name}
        self.frontend_path, self.backend_path = create_device(
            client, "vif", frontend_domid, devid, backend_domain.domid, backend_values)
        client.write(f"{self.frontend_path}/mac", mac_text)
        client.write(f"{self.frontend_path}/handle", str(devid))
        self.netback = Netback(backend_domain, client, frontend_domid, devid, self.mac, switch)
        if start:
            self.netback.start()

    @property
    def state(self):
        """The backend's xenbus state."""
        return self.netback.xenbus.state

    # --- save / restore -----------------------------------------------------------------

    def save(self):
        """The VIF record's state map; serves the tx requests already on the ring first."""
        spec = self.spec
        return {"kind": spec.kind, "switch": spec.switch, "local": spec.local, "remote": spec.remote,
                "mac": self.mac, "devid": self.devid, "backend": self.netback.save()}

    def restore(self, state, where="snapshot"):
        """Take up the saved connection in this Vif (built by restore_vifs from the same
        state), then announce the MAC if the vif is connected."""
        spec, devid = check_vif_state(state, where)
        if devid != self.devid or spec.mac != self.mac:
            raise MigrationStreamError(f"{where}: vif {devid} ({format_mac(spec.mac)}) restored as vif "
                                       f"{self.devid} ({format_mac(self.mac)})")
        self.netback.restore(state["backend"])
        self.netback.announce()

    def release(self):
        """Let go of a UDP vif's local address (a live migration's destination on this
        host binds it next); frames sent meanwhile are dropped and counted."""
        if self.endpoint is not None:
            self.endpoint.release()

    def reclaim(self):
        """Bind the local address again after ``release`` (the migration failed);
        MigrationError if it is taken now (the vif then stays cut off from the wire)."""
        if self.endpoint is not None:
            try:
                self.endpoint.reclaim()
            except ConfigError as err:
                raise MigrationError(f"vif {self.devid}: {err}; its frames are dropped") from None

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
    return _attach(pv, specs, network, start=True)


def _attach(pv, specs, network, start):
    domid = pv.guest.domid
    vifs = []
    try:
        for devid, spec in enumerate(specs):
            endpoint = None
            if spec.kind == "switch":
                switch = network.switch(spec.switch)
            else:
                switch = network.udp_switch(spec.local, spec.remote)
                endpoint = network.endpoint(spec.local)
            mac = spec.mac or default_mac(spec, domid, devid)
            vifs.append(Vif(pv.dom0, pv.xs, domid, devid, mac, switch, spec, endpoint, start=start))
    except BaseException:
        close_all(vifs)
        raise
    return vifs


def restore_vifs(pv, states, network, where="snapshot"):
    """Unstarted Vifs for the VIF state maps ``states`` (Vif.save(), in device order) on
    ``network``: every record checked first (MigrationStreamError), then each joins its
    switch or binds its UDP endpoint (MigrationError if the address is busy: the vifs
    made so far are closed; the caller closes ``network``'s endpoints with the VM).
    Each is then brought back with ``Vif.restore(state)`` once the guest's domain is
    restored."""
    if len(states) > MAX_VIFS:
        raise MigrationStreamError(f"{where}: {len(states)} vifs; at most {MAX_VIFS}")
    specs = []
    for index, state in enumerate(states):
        spec, devid = check_vif_state(state, where)
        if devid != index:
            raise MigrationStreamError(f"{where}: vif record {index} is for vif {devid}")
        specs.append(spec)
    try:
        return _attach(pv, specs, network, start=False)
    except ConfigError as err:
        raise MigrationError(f"{where}: a vif cannot be attached here: {err}") from None


