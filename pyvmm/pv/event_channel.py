"""Event channels with Xen's 2-level ABI (xen/include/public/event_channel.h, xen.h).

Responsibility: one domain's port table (free, reserved port 0, unbound,
interdomain, VIRQ, IPI), the operations on it (alloc_unbound, bind_interdomain,
bind_virq, bind_ipi, bind_vcpu, send, close, status, unmask) with Xen's -errno
results, and event delivery through shared_info: the pending bit
(``evtchn_pending[]``), the mask (``evtchn_mask[]``), the selector word
(``vcpu_info.evtchn_pending_sel``) and ``evtchn_upcall_pending``.
``event_channel_op`` is the hypercall entry point.

Invariants (2-level ABI):
- a port's pending bit is set on a send; if it was clear and the port is not
  masked, its selector bit is set in the bound vCPU's ``evtchn_pending_sel``, and if
  that was clear ``evtchn_upcall_pending`` is set; on that 0 -> 1 edge the domain's
  ``on_upcall(vcpu)`` is called. A masked port's edge is not lost: unmask re-raises it;
- Python-side backends (domain 0) get a ``notify(port)`` callback per port instead of
  bits: it runs synchronously on every send to that port;
- an interdomain pair always points at each other; closing one side makes the
  other UNBOUND, waiting for the same remote domain again;
- port 0 is reserved and never allocated; ports are below ``max_ports`` (at most
  EVTCHN_2L_NR_CHANNELS = 4096).

Save/restore: ``save()`` gives every port's binding and where shared_info lives (its
private copy while the guest has not placed it, since the pending and mask bits are
there). Python ``notify`` callbacks are not state: a backend sets them again. An
interdomain port is relinked on restore when its peer is restored too (whichever
comes first waits UNBOUND for the other); a peer that is not there leaves it UNBOUND
for that domain, as if the peer had closed.

Not provided: physical IRQs (bind_pirq gives -ENOSYS) and the FIFO ABI
(init_control, expand_array, set_priority give -ENOSYS, so guests keep 2-level).
"""

import struct

from pyvmm.errors import EventChannelError, GuestMemoryError
from pyvmm.migrate.state import StateFields
from pyvmm.pv import abi

# Xen's channel states (xen/include/xen/sched.h ECS_*: hypervisor-internal, not ABI).
ECS_FREE, ECS_RESERVED, ECS_UNBOUND, ECS_INTERDOMAIN, ECS_PIRQ, ECS_VIRQ, ECS_IPI = range(7)
_STATUS = {ECS_FREE: abi.EVTCHNSTAT_closed, ECS_RESERVED: abi.EVTCHNSTAT_closed,
           ECS_UNBOUND: abi.EVTCHNSTAT_unbound, ECS_INTERDOMAIN: abi.EVTCHNSTAT_interdomain,
           ECS_PIRQ: abi.EVTCHNSTAT_pirq, ECS_VIRQ: abi.EVTCHNSTAT_virq, ECS_IPI: abi.EVTCHNSTAT_ipi}

# VIRQs delivered to one vCPU; the others are global (bound on vCPU 0 only). xen.h: "V."
_PER_VCPU_VIRQS = {abi.VIRQ_TIMER, abi.VIRQ_DEBUG, 7, 13}  # TIMER, DEBUG, XENOPROF, XENPMU

_U8 = struct.Struct("<B")
_U64 = struct.Struct("<Q")
_PENDING = abi.shared_info.offsetof("evtchn_pending")
_MASK = abi.shared_info.offsetof("evtchn_mask")
_VCPU_INFO = abi.vcpu_info.size
_UPCALL_PENDING = abi.vcpu_info.offsetof("evtchn_upcall_pending")
_UPCALL_MASK = abi.vcpu_info.offsetof("evtchn_upcall_mask")
_PENDING_SEL = abi.vcpu_info.offsetof("evtchn_pending_sel")
_WORD = abi.EVTCHN_WORD_BITS


def _fail(errno, what):
    raise EventChannelError(-errno, what)


class Channel:
    """One port's state (Xen's ``struct evtchn``)."""

    __slots__ = ("state", "remote_domid", "remote", "virq", "vcpu", "notify", "awaiting")

    def __init__(self):
        self.state = ECS_FREE
        self.remote_domid = None   # UNBOUND: who may bind
        self.remote = None         # INTERDOMAIN: (Domain, port)
        self.virq = None
        self.vcpu = 0
        self.notify = None         # Python-side callback(port)
        self.awaiting = None       # restored UNBOUND: the (domid, port) it was connected to


def _test_and_set(view, offset, bit):
    word = _U64.unpack_from(view, offset)[0]
    _U64.pack_into(view, offset, word | (1 << bit))
    return bool(word >> bit & 1)


def _test_and_clear(view, offset, bit):
    word = _U64.unpack_from(view, offset)[0]
    _U64.pack_into(view, offset, word & ~(1 << bit))
    return bool(word >> bit & 1)


def _test(view, offset, bit):
    return bool(_U64.unpack_from(view, offset)[0] >> bit & 1)


class EventChannels:
    """The event-channel table of ``domain`` and the operations it issues."""

    def __init__(self, domain, max_ports=1024):
        if not 2 <= max_ports <= abi.EVTCHN_2L_NR_CHANNELS:
            raise ValueError(f"domain {domain.domid}: {max_ports} event channels; the 2-level "
                             f"ABI allows 2..{abi.EVTCHN_2L_NR_CHANNELS}")
        self.domain = domain
        self.max_ports = max_ports
        self._ports = [Channel()]
        self._ports[0].state = ECS_RESERVED
        self._virqs = {}   # (virq, vcpu) -> port

    # --- save / restore -----------------------------------------------------------

    def save(self):
        """Plain values: every port (index = port number) and the shared_info location."""
        ports = []
        for chan in self._ports:
            remote = None if chan.remote is None else [chan.remote[0].domid, chan.remote[1]]
            ports.append({"state": chan.state, "remote_domid": chan.remote_domid, "remote": remote,
                          "virq": chan.virq, "vcpu": chan.vcpu})
        d = self.domain
        private = bytes(d._private_shared_info) if d.shared_info_gfn is None else None
        return {"ports": ports, "shared_info_gfn": d.shared_info_gfn, "shared_info": private}

    def _checked_port(self, port, state):
        f = StateFields(state, f"domain {self.domain.domid} event channel port {port}")
        chan = Channel()
        chan.state = f.choice("state", (ECS_RESERVED,) if port == 0 else
                              (ECS_FREE, ECS_UNBOUND, ECS_INTERDOMAIN, ECS_VIRQ, ECS_IPI))
        chan.vcpu = f.uint("vcpu", self.domain.nr_vcpus)
        unbound, interdomain, virq = (chan.state == s for s in (ECS_UNBOUND, ECS_INTERDOMAIN, ECS_VIRQ))
        chan.remote_domid = f.optional_uint("remote_domid", abi.DOMID_FIRST_RESERVED)
        remote = f.raw("remote")
        chan.virq = f.optional_uint("virq", abi.NR_VIRQS)
        f.done()
        if (chan.remote_domid is None) == unbound:
            f.fail("remote_domid", f"{chan.remote_domid!r} for channel state {chan.state}")
        if (chan.virq is None) == virq or (virq and chan.virq not in _PER_VCPU_VIRQS and chan.vcpu):
            f.fail("virq", f"{chan.virq!r} on vCPU {chan.vcpu} for channel state {chan.state}")
        if interdomain:
            if (not isinstance(remote, list) or len(remote) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in remote)
                    or not 0 <= remote[0] < abi.DOMID_FIRST_RESERVED
                    or not 0 < remote[1] < abi.EVTCHN_2L_NR_CHANNELS):
                f.fail("remote", f"{remote!r} is not [domid, port]")
        elif remote is not None:
            f.fail("remote", f"{remote!r} for channel state {chan.state}")
        return chan, (tuple(remote) if interdomain else None)

    def restore(self, state):
        """Take the state ``save`` gave; checked in full before anything changes."""
        d = self.domain
        f = StateFields(state, f"domain {d.domid} event channels")
        saved = f.items("ports", self.max_ports)
        if not saved:
            f.fail("ports", "empty: port 0 is always there")
        checked = [self._checked_port(port, s) for port, s in enumerate(saved)]
        virqs = {}
        for port, (chan, _) in enumerate(checked):
            if chan.state == ECS_VIRQ:
                if (chan.virq, chan.vcpu) in virqs:
                    f.fail("ports", f"VIRQ {chan.virq} on vCPU {chan.vcpu} is bound twice")
                virqs[chan.virq, chan.vcpu] = port
        gfn = f.optional_uint("shared_info_gfn", 1 << 64)
        if gfn is not None and not d.owns(gfn):
            f.fail("shared_info_gfn", f"{gfn:#x} is not a frame domain {d.domid} owns")
        private = f.raw("shared_info")
        if gfn is None:
            private = f.blob("shared_info", size=len(d._private_shared_info))
        elif private is not None:
            f.fail("shared_info", "a private copy although the page is placed in the guest")
        f.done()
        self.close_all()
        d.shared_info_gfn = gfn
        if private is not None:
            d._private_shared_info[:] = private
        self._ports = [chan for chan, _ in checked]
        self._virqs = virqs
        for port, (chan, remote) in enumerate(checked):
            if remote is not None:
                self._relink(port, chan, remote)

    def _relink(self, port, chan, remote):
        """Connect restored interdomain ``port`` to its peer if the peer, restored
        before it, waits for exactly this port; else wait UNBOUND for the peer."""
        rd = self.domain.lookup(remote[0])
        peer = None
        if rd is not None and remote[1] < len(rd.evtchn._ports):
            peer = rd.evtchn._ports[remote[1]]
        if peer is not None and peer.state == ECS_UNBOUND and peer.awaiting == (self.domain.domid, port):
            chan.state, chan.remote = ECS_INTERDOMAIN, (rd, remote[1])
            peer.state, peer.remote, peer.remote_domid = ECS_INTERDOMAIN, (self.domain, port), None
            peer.awaiting = None
        else:
            chan.state, chan.remote, chan.remote_domid = ECS_UNBOUND, None, remote[0]
            chan.awaiting = remote

    # --- ports ---------------------------------------------------------------------

    def channel(self, port):
        """The Channel at ``port``; EINVAL if the port was never valid."""
        if not 0 <= port < len(self._ports):
            _fail(abi.EINVAL, f"domain {self.domain.domid} has no event channel port {port}")
        return self._ports[port]

    def _alloc(self):
        for port, chan in enumerate(self._ports):
            if chan.state == ECS_FREE:
                return port, chan
        if len(self._ports) >= self.max_ports:
            _fail(abi.ENOSPC, f"domain {self.domain.domid} has used all {self.max_ports} "
                              "event channel ports")
        self._ports.append(Channel())
        return len(self._ports) - 1, self._ports[-1]

    def _free(self, port):
        self._ports[port] = Channel()

    def _check_vcpu(self, vcpu):
        if not 0 <= vcpu < self.domain.nr_vcpus:
            _fail(abi.ENOENT, f"domain {self.domain.domid} has no vCPU {vcpu}")

    def _target(self, dom, what):
        target = self.domain.resolve(dom)
        if target is None:
            _fail(abi.ESRCH, f"{what}: no domain {dom}")
        if target is not self.domain and not self.domain.privileged:
            _fail(abi.EPERM, f"{what}: domain {self.domain.domid} may not act on domain {dom}")
        return target

    # --- operations (the caller is self.domain) -------------------------------------

    def alloc_unbound(self, dom=abi.DOMID_SELF, remote_dom=abi.DOMID_SELF):
        """EVTCHNOP_alloc_unbound: a port in ``dom`` that ``remote_dom`` may bind; returns it."""
        target = self._target(dom, "alloc_unbound")
        remote = self.domain.domid if remote_dom == abi.DOMID_SELF else remote_dom
        port, chan = target.evtchn._alloc()
        chan.state = ECS_UNBOUND
        chan.remote_domid = remote
        return port

    def bind_interdomain(self, remote_dom, remote_port, notify=None):
        """EVTCHNOP_bind_interdomain: connect a new local port to ``remote_dom:remote_port``."""
        rd = self.domain.resolve(remote_dom)
        if rd is None:
            _fail(abi.ESRCH, f"bind_interdomain: no domain {remote_dom}")
        lport, lchan = self._alloc()
        try:
            rchan = rd.evtchn.channel(remote_port)
            if rchan.state != ECS_UNBOUND or rchan.remote_domid != self.domain.domid:
                _fail(abi.EINVAL, f"bind_interdomain: port {remote_port} of domain {rd.domid} is "
                                  f"not waiting for domain {self.domain.domid}")
        except EventChannelError:
            self._free(lport)
            raise
        lchan.state = ECS_INTERDOMAIN
        lchan.remote = (rd, remote_port)
        lchan.notify = notify
        rchan.state = ECS_INTERDOMAIN
        rchan.remote = (self.domain, lport)
        rchan.remote_domid = None
        rchan.awaiting = None
        # As Xen: the remote side may have sent before we bound; raise the local port.
        self.set_pending(lport)
        return lport

    def bind_virq(self, virq, vcpu=0):
        """EVTCHNOP_bind_virq: a port that receives ``virq`` on ``vcpu``."""
        if not 0 <= virq < abi.NR_VIRQS:
            _fail(abi.EINVAL, f"bind_virq: VIRQ {virq} is not below {abi.NR_VIRQS}")
        if virq not in _PER_VCPU_VIRQS and vcpu != 0:
            _fail(abi.EINVAL, f"bind_virq: global VIRQ {virq} binds on vCPU 0, not {vcpu}")
        self._check_vcpu(vcpu)
        if (virq, vcpu) in self._virqs:
            _fail(abi.EEXIST, f"bind_virq: VIRQ {virq} on vCPU {vcpu} is already port "
                              f"{self._virqs[virq, vcpu]}")
        port, chan = self._alloc()
        chan.state = ECS_VIRQ
        chan.virq = virq
        chan.vcpu = vcpu
        self._virqs[virq, vcpu] = port
        return port

    def bind_ipi(self, vcpu=0):
        """EVTCHNOP_bind_ipi: a port that notifies ``vcpu`` of this domain."""
        self._check_vcpu(vcpu)
        port, chan = self._alloc()
        chan.state = ECS_IPI
        chan.vcpu = vcpu
        return port

    def bind_vcpu(self, port, vcpu):
        """EVTCHNOP_bind_vcpu: deliver ``port``'s events to ``vcpu``."""
        self._check_vcpu(vcpu)
        chan = self.channel(port)
        if chan.state == ECS_VIRQ and chan.virq in _PER_VCPU_VIRQS:
            _fail(abi.EINVAL, f"bind_vcpu: port {port} carries per-vCPU VIRQ {chan.virq}")
        if chan.state not in (ECS_UNBOUND, ECS_INTERDOMAIN, ECS_VIRQ, ECS_PIRQ):
            _fail(abi.EINVAL, f"bind_vcpu: port {port} of domain {self.domain.domid} is not bound")
        chan.vcpu = vcpu

    def close(self, port):
        """EVTCHNOP_close: free ``port``; an interdomain peer goes back to UNBOUND."""
        chan = self.channel(port)
        if chan.state in (ECS_FREE, ECS_RESERVED):
            _fail(abi.EINVAL, f"close: port {port} of domain {self.domain.domid} is not open")
        if chan.state == ECS_VIRQ:
            del self._virqs[chan.virq, chan.vcpu]
        elif chan.state == ECS_INTERDOMAIN:
            rd, rport = chan.remote
            rchan = rd.evtchn._ports[rport]
            rchan.state = ECS_UNBOUND
            rchan.remote = None
            rchan.remote_domid = self.domain.domid
        self._free(port)

    def open_ports(self):
        """The ports in use (neither free nor the reserved port 0), ascending."""
        return [p for p, c in enumerate(self._ports) if c.state not in (ECS_FREE, ECS_RESERVED)]

    def close_all(self):
        for port in self.open_ports():
            self.close(port)

    def send(self, port):
        """EVTCHNOP_send: notify the other end of ``port`` (dropped while UNBOUND)."""
        chan = self.channel(port)
        if chan.state == ECS_INTERDOMAIN:
            rd, rport = chan.remote
            rd.evtchn.set_pending(rport)
        elif chan.state == ECS_IPI:
            self.set_pending(port)
        elif chan.state != ECS_UNBOUND:
            _fail(abi.EINVAL, f"send: port {port} of domain {self.domain.domid} is not connected")

    def status(self, dom, port):
        """EVTCHNOP_status: ``evtchn_status`` OUT fields for ``dom:port`` as a dict."""
        target = self._target(dom, "status")
        chan = target.evtchn.channel(port)
        out = {"status": _STATUS[chan.state], "vcpu": chan.vcpu, "u": {}}
        if chan.state == ECS_UNBOUND:
            out["u"] = {"unbound": {"dom": chan.remote_domid}}
        elif chan.state == ECS_INTERDOMAIN:
            out["u"] = {"interdomain": {"dom": chan.remote[0].domid, "port": chan.remote[1]}}
        elif chan.state == ECS_VIRQ:
            out["u"] = {"virq": chan.virq}
        return out

    def unmask(self, port):
        """EVTCHNOP_unmask: clear the mask and re-raise an event that arrived while masked."""
        chan = self.channel(port)
        word, bit = divmod(port, _WORD)
        si = self.domain.shared_info()
        if (_test_and_clear(si, _MASK + 8 * word, bit) and _test(si, _PENDING + 8 * word, bit)):
            self._raise_selector(chan.vcpu, word)

    # --- delivery ------------------------------------------------------------------

    def set_pending(self, port):
        """Mark ``port`` pending and, on an unmasked 0 -> 1 edge, signal its vCPU."""
        chan = self._ports[port]
        if chan.notify is not None:
            chan.notify(port)
            return
        word, bit = divmod(port, _WORD)
        si = self.domain.shared_info()
        if _test_and_set(si, _PENDING + 8 * word, bit):
            return
        if not _test(si, _MASK + 8 * word, bit):
            self._raise_selector(chan.vcpu, word)

    def _raise_selector(self, vcpu, word):
        si = self.domain.shared_info()
        base = vcpu * _VCPU_INFO
        if _test_and_set(si, base + _PENDING_SEL, word):
            return
        if si[base + _UPCALL_PENDING]:
            return
        _U8.pack_into(si, base + _UPCALL_PENDING, 1)
        if self.domain.on_upcall is not None:
            self.domain.on_upcall(vcpu)

    def send_virq(self, virq, vcpu=0):
        """Raise ``virq`` on ``vcpu`` (the VMM's timer does this); False if nothing is bound."""
        port = self._virqs.get((virq, vcpu))
        if port is None:
            return False
        self.set_pending(port)
        return True

    def set_notify(self, port, notify):
        """Give ``port`` a Python callback(port) instead of shared_info bits (domain 0)."""
        chan = self.channel(port)
        if chan.state in (ECS_FREE, ECS_RESERVED):
            _fail(abi.EINVAL, f"set_notify: port {port} of domain {self.domain.domid} is not open")
        chan.notify = notify

    # --- the guest's view, for the VMM and for tests ------------------------------------

    def is_pending(self, port):
        word, bit = divmod(port, _WORD)
        return _test(self.domain.shared_info(), _PENDING + 8 * word, bit)

    def is_masked(self, port):
        word, bit = divmod(port, _WORD)
        return _test(self.domain.shared_info(), _MASK + 8 * word, bit)

    def upcall_pending(self, vcpu=0):
        """True if ``vcpu`` has an upcall pending and has not masked upcalls."""
        si = self.domain.shared_info()
        base = vcpu * _VCPU_INFO
        return bool(si[base + _UPCALL_PENDING]) and not si[base + _UPCALL_MASK]


# --- the hypercall ------------------------------------------------------------------

def _op_alloc_unbound(chans, op):
    return {"port": chans.alloc_unbound(op["dom"], op["remote_dom"])}


def _op_bind_interdomain(chans, op):
    return {"local_port": chans.bind_interdomain(op["remote_dom"], op["remote_port"])}


def _op_bind_virq(chans, op):
    return {"port": chans.bind_virq(op["virq"], op["vcpu"])}


def _op_bind_ipi(chans, op):
    return {"port": chans.bind_ipi(op["vcpu"])}


def _op_bind_vcpu(chans, op):
    chans.bind_vcpu(op["port"], op["vcpu"])
    return {}


def _op_close(chans, op):
    chans.close(op["port"])
    return {}


def _op_send(chans, op):
    chans.send(op["port"])
    return {}


def _op_status(chans, op):
    return chans.status(op["dom"], op["port"])


def _op_unmask(chans, op):
    chans.unmask(op["port"])
    return {}


_OPS = {
    abi.EVTCHNOP_alloc_unbound: (abi.evtchn_alloc_unbound, _op_alloc_unbound),
    abi.EVTCHNOP_bind_interdomain: (abi.evtchn_bind_interdomain, _op_bind_interdomain),
    abi.EVTCHNOP_bind_virq: (abi.evtchn_bind_virq, _op_bind_virq),
    abi.EVTCHNOP_bind_ipi: (abi.evtchn_bind_ipi, _op_bind_ipi),
    abi.EVTCHNOP_bind_vcpu: (abi.evtchn_bind_vcpu, _op_bind_vcpu),
    abi.EVTCHNOP_close: (abi.evtchn_close, _op_close),
    abi.EVTCHNOP_send: (abi.evtchn_send, _op_send),
    abi.EVTCHNOP_status: (abi.evtchn_status, _op_status),
    abi.EVTCHNOP_unmask: (abi.evtchn_unmask, _op_unmask),
}


def event_channel_op(domain, cmd, arg):
    """HYPERVISOR_event_channel_op(cmd, arg) from ``domain``: 0 or -errno.

    Reads the op struct at ``arg`` through ``domain.access`` and writes its OUT
    fields back (the whole struct, as Xen's copy_to_guest does); -EFAULT when
    ``arg`` is not the domain's memory.
    """
    entry = _OPS.get(cmd)
    if entry is None:
        return -abi.ENOSYS
    layout, handler = entry
    try:
        raw = bytearray(domain.access.copy_from_guest(arg, layout.size))
        try:
            out = handler(domain.evtchn, layout.unpack(raw))
        except EventChannelError as exc:
            return exc.code
        if out:
            layout.pack_into(raw, 0, out)
            domain.access.copy_to_guest(arg, raw)
    except GuestMemoryError:
        return -abi.EFAULT
    return 0
