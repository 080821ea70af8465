"""2-level event channels: bits in shared_info, upcalls, backends in domain 0, hostile guests."""

import pytest

from pyvmm.errors import EventChannelError
from pyvmm.pv import abi
from pyvmm.pv.event_channel import event_channel_op

from .pvworld import SCRATCH, call_evtchn, world

SI_GFN = 0x50
PENDING = abi.shared_info.offsetof("evtchn_pending")
MASK = abi.shared_info.offsetof("evtchn_mask")
SEL = abi.vcpu_info.offsetof("evtchn_pending_sel")


@pytest.fixture
def w():
    table, dom0, guests = world(nr_guests=3, nr_vcpus=2)
    upcalls = {g.domid: [] for g in guests}
    for g in guests:
        g.place_shared_info(SI_GFN)
        g.on_upcall = upcalls[g.domid].append
    return table, dom0, guests, upcalls


def si_u64(guest, offset):
    return guest.memory.read_u64(SI_GFN * 4096 + offset)


def connect(a, b):
    """a allocates a port for b, b binds it (both through hypercalls); (a_port, b_port)."""
    rc, op = call_evtchn(a, abi.EVTCHNOP_alloc_unbound, abi.evtchn_alloc_unbound,
                         dom=abi.DOMID_SELF, remote_dom=b.domid)
    assert rc == 0
    rc, bop = call_evtchn(b, abi.EVTCHNOP_bind_interdomain, abi.evtchn_bind_interdomain,
                          remote_dom=a.domid, remote_port=op["port"])
    assert rc == 0
    return op["port"], bop["local_port"]


def send(domain, port):
    return call_evtchn(domain, abi.EVTCHNOP_send, abi.evtchn_send, port=port)[0]


def code_of(fn, *args):
    with pytest.raises(EventChannelError) as info:
        fn(*args)
    return info.value.code


def test_send_sets_pending_selector_and_upcall_in_the_guests_shared_info(w):
    _, _, (g1, g2, _), upcalls = w
    p1, p2 = connect(g1, g2)
    assert (p1, p2) == (1, 1)
    assert upcalls[2] == [0]                    # Xen raises the new local port at bind time
    g2.memory.write(SI_GFN * 4096, b"\0")        # the guest handles it: clears upcall pending
    g2.memory.write_u64(SI_GFN * 4096 + SEL, 0)
    g2.memory.write_u64(SI_GFN * 4096 + PENDING, 0)
    assert send(g1, p1) == 0
    assert si_u64(g2, PENDING) == 1 << p2 and si_u64(g2, SEL) == 1
    assert g2.memory.read_u8(SI_GFN * 4096) == 1 and upcalls[2] == [0, 0]
    assert send(g1, p1) == 0                     # already pending: coalesced, no second upcall
    assert upcalls[2] == [0, 0] and si_u64(g1, PENDING) == 0


def test_ports_above_63_use_later_words_and_selector_bits(w):
    _, _, (g1, g2, _), _ = w
    for _ in range(70):
        g2.evtchn.bind_ipi(0)
    p1, p2 = connect(g1, g2)
    assert p2 == 71
    assert si_u64(g2, PENDING + 8) == 1 << 7 and si_u64(g2, SEL) & 0b10


def test_masked_port_keeps_the_edge_until_unmask(w):
    _, _, (g1, g2, _), upcalls = w
    p1, p2 = connect(g1, g2)
    g2.memory.write(SI_GFN * 4096, bytes(abi.shared_info.size))   # guest clears everything ...
    g2.memory.write_u64(SI_GFN * 4096 + MASK, 1 << p2)            # ... and masks the port
    upcalls[2].clear()
    send(g1, p1)
    assert g2.evtchn.is_pending(p2) and g2.evtchn.is_masked(p2)
    assert si_u64(g2, SEL) == 0 and upcalls[2] == []
    rc, _ = call_evtchn(g2, abi.EVTCHNOP_unmask, abi.evtchn_unmask, port=p2)
    assert rc == 0 and not g2.evtchn.is_masked(p2)
    assert si_u64(g2, SEL) == 1 and upcalls[2] == [0] and g2.evtchn.upcall_pending(0)
    g2.memory.write_u8(SI_GFN * 4096 + abi.vcpu_info.offsetof("evtchn_upcall_mask"), 1)
    assert not g2.evtchn.upcall_pending(0)       # the guest masked upcalls on vCPU 0


def test_bind_vcpu_and_ipi_deliver_to_that_vcpus_vcpu_info(w):
    _, _, (g1, g2, _), upcalls = w
    rc, op = call_evtchn(g1, abi.EVTCHNOP_bind_ipi, abi.evtchn_bind_ipi, vcpu=1)
    assert rc == 0
    send(g1, op["port"])
    assert si_u64(g1, abi.vcpu_info.size + SEL) == 1 and upcalls[1] == [1]
    p1, p2 = connect(g1, g2)
    assert call_evtchn(g2, abi.EVTCHNOP_bind_vcpu, abi.evtchn_bind_vcpu, port=p2, vcpu=1)[0] == 0
    upcalls[2].clear()
    g2.memory.write(SI_GFN * 4096, bytes(abi.shared_info.size))
    send(g1, p1)
    assert upcalls[2] == [1]


def test_python_backend_in_domain0_gets_a_callback_per_send(w):
    _, dom0, (g1, *_), upcalls = w
    port = dom0.evtchn.alloc_unbound(abi.DOMID_SELF, 1)
    heard = []
    dom0.evtchn.set_notify(port, heard.append)
    rc, op = call_evtchn(g1, abi.EVTCHNOP_bind_interdomain, abi.evtchn_bind_interdomain,
                         remote_dom=0, remote_port=port)
    assert rc == 0
    send(g1, op["local_port"])
    send(g1, op["local_port"])
    assert heard == [port, port]
    upcalls[1].clear()
    g1.memory.write(SI_GFN * 4096, bytes(abi.shared_info.size))
    dom0.evtchn.send(port)
    assert g1.evtchn.is_pending(op["local_port"]) and upcalls[1] == [0]


def test_dom0_sets_up_a_guest_port_for_itself_and_binds_with_a_callback(w):
    _, dom0, (g1, *_), _ = w
    gport = dom0.evtchn.alloc_unbound(1, 0)              # privileged: a port in domain 1
    heard = []
    lport = dom0.evtchn.bind_interdomain(1, gport, notify=heard.append)
    assert heard == [lport]                              # raised at bind, as Xen does
    send(g1, gport)
    assert heard == [lport, lport]
    assert g1.evtchn.status(abi.DOMID_SELF, gport)["u"]["interdomain"] == {"dom": 0, "port": lport}


def test_close_leaves_the_peer_unbound_and_later_sends_are_refused(w):
    _, _, (g1, g2, _), _ = w
    p1, p2 = connect(g1, g2)
    assert call_evtchn(g2, abi.EVTCHNOP_close, abi.evtchn_close, port=p2)[0] == 0
    rc, st = call_evtchn(g1, abi.EVTCHNOP_status, abi.evtchn_status, dom=abi.DOMID_SELF, port=p1)
    assert rc == 0 and st["status"] == abi.EVTCHNSTAT_unbound and st["u"]["unbound"]["dom"] == 2
    assert send(g1, p1) == 0                          # unbound: the notification is dropped
    assert send(g2, p2) == -abi.EINVAL                # closed
    assert call_evtchn(g2, abi.EVTCHNOP_close, abi.evtchn_close, port=p2)[0] == -abi.EINVAL
    rc, st = call_evtchn(g2, abi.EVTCHNOP_status, abi.evtchn_status, dom=abi.DOMID_SELF, port=p2)
    assert rc == 0 and st["status"] == abi.EVTCHNSTAT_closed
    rc, op = call_evtchn(g2, abi.EVTCHNOP_bind_interdomain, abi.evtchn_bind_interdomain,
                         remote_dom=1, remote_port=p1)
    assert rc == 0 and op["local_port"] == p2         # the freed port is reused


def test_status_reports_every_state(w):
    _, dom0, (g1, g2, _), _ = w
    p1, p2 = connect(g1, g2)
    virq = g1.evtchn.bind_virq(abi.VIRQ_TIMER, 1)
    cases = {0: abi.EVTCHNSTAT_closed, p1: abi.EVTCHNSTAT_interdomain, virq: abi.EVTCHNSTAT_virq}
    for port, status in cases.items():
        st = dom0.evtchn.status(1, port)
        assert st["status"] == status
    assert dom0.evtchn.status(1, virq) == {"status": abi.EVTCHNSTAT_virq, "vcpu": 1,
                                          "u": {"virq": abi.VIRQ_TIMER}}


def test_virq_timer_binds_once_per_vcpu_and_fires(w):
    _, _, (g1, *_), upcalls = w
    rc, op = call_evtchn(g1, abi.EVTCHNOP_bind_virq, abi.evtchn_bind_virq, virq=abi.VIRQ_TIMER, vcpu=0)
    assert rc == 0
    assert g1.evtchn.send_virq(abi.VIRQ_TIMER, 0) and g1.evtchn.is_pending(op["port"])
    assert upcalls[1] == [0]
    assert not g1.evtchn.send_virq(abi.VIRQ_TIMER, 1)     # nothing bound on vCPU 1
    assert send(g1, op["port"]) == -abi.EINVAL             # a VIRQ port cannot be sent on
    again = call_evtchn(g1, abi.EVTCHNOP_bind_virq, abi.evtchn_bind_virq, virq=abi.VIRQ_TIMER, vcpu=0)
    assert again[0] == -abi.EEXIST
    assert call_evtchn(g1, abi.EVTCHNOP_close, abi.evtchn_close, port=op["port"])[0] == 0
    assert g1.evtchn.bind_virq(abi.VIRQ_TIMER, 0) == op["port"]


@pytest.mark.parametrize("virq, vcpu, rc", [
    (abi.NR_VIRQS, 0, -abi.EINVAL),
    (0xFFFFFFFF, 0, -abi.EINVAL),
    (abi.VIRQ_CONSOLE, 1, -abi.EINVAL),      # global VIRQs bind on vCPU 0
    (abi.VIRQ_TIMER, 2, -abi.ENOENT),        # the domain has 2 vCPUs
    (abi.VIRQ_TIMER, 0xFFFFFFFF, -abi.ENOENT),
])
def test_bind_virq_refusals(w, virq, vcpu, rc):
    _, _, (g1, *_), _ = w
    assert call_evtchn(g1, abi.EVTCHNOP_bind_virq, abi.evtchn_bind_virq, virq=virq, vcpu=vcpu)[0] == rc


def test_alloc_unbound_refusals_and_port_exhaustion():
    _, _, (g1, g2) = world(nr_guests=2, max_evtchn_ports=4)
    rc, _ = call_evtchn(g1, abi.EVTCHNOP_alloc_unbound, abi.evtchn_alloc_unbound, dom=2, remote_dom=1)
    assert rc == -abi.EPERM
    rc, _ = call_evtchn(g1, abi.EVTCHNOP_alloc_unbound, abi.evtchn_alloc_unbound, dom=9, remote_dom=1)
    assert rc == -abi.ESRCH
    ports = [g1.evtchn.alloc_unbound(abi.DOMID_SELF, 2) for _ in range(3)]
    assert ports == [1, 2, 3]
    rc, op = call_evtchn(g1, abi.EVTCHNOP_alloc_unbound, abi.evtchn_alloc_unbound,
                         dom=abi.DOMID_SELF, remote_dom=2)
    assert rc == -abi.ENOSPC and op["port"] == 0      # nothing written back on failure
    assert g2.evtchn.bind_interdomain(1, 1) == 1      # a full table still takes binds to it
    g1.evtchn.close(2)
    assert g1.evtchn.alloc_unbound(abi.DOMID_SELF, 2) == 2


@pytest.mark.parametrize("remote_dom, remote_port, rc", [
    (9, 1, -abi.ESRCH),
    (1, 0, -abi.EINVAL),            # the reserved port
    (1, 2, -abi.EINVAL),            # waiting for domain 3, not 2
    (1, 3, -abi.EINVAL),            # already interdomain with domain 3
    (1, 500, -abi.EINVAL),          # never allocated
    (1, 0xFFFFFFFF, -abi.EINVAL),
])
def test_bind_interdomain_refusals_leak_no_port(w, remote_dom, remote_port, rc):
    _, _, (g1, g2, g3), _ = w
    assert g1.evtchn.alloc_unbound(abi.DOMID_SELF, 2) == 1
    assert g1.evtchn.alloc_unbound(abi.DOMID_SELF, 3) == 2
    assert g1.evtchn.alloc_unbound(abi.DOMID_SELF, 3) == 3
    g3.evtchn.bind_interdomain(1, 3)
    got = call_evtchn(g2, abi.EVTCHNOP_bind_interdomain, abi.evtchn_bind_interdomain,
                      remote_dom=remote_dom, remote_port=remote_port)
    assert got[0] == rc and got[1]["local_port"] == 0
    assert g2.evtchn.open_ports() == [] and g1.evtchn.open_ports() == [1, 2, 3]
    assert g2.evtchn.bind_interdomain(1, 1) == 1


@pytest.mark.parametrize("cmd, layout, fields, rc", [
    (abi.EVTCHNOP_send, abi.evtchn_send, {"port": 0}, -abi.EINVAL),
    (abi.EVTCHNOP_send, abi.evtchn_send, {"port": 4095}, -abi.EINVAL),
    (abi.EVTCHNOP_send, abi.evtchn_send, {"port": 0xFFFFFFFF}, -abi.EINVAL),
    (abi.EVTCHNOP_close, abi.evtchn_close, {"port": 0}, -abi.EINVAL),
    (abi.EVTCHNOP_close, abi.evtchn_close, {"port": 77}, -abi.EINVAL),
    (abi.EVTCHNOP_unmask, abi.evtchn_unmask, {"port": 1 << 20}, -abi.EINVAL),
    (abi.EVTCHNOP_status, abi.evtchn_status, {"dom": 2, "port": 1}, -abi.EPERM),
    (abi.EVTCHNOP_status, abi.evtchn_status, {"dom": 300, "port": 1}, -abi.ESRCH),
    (abi.EVTCHNOP_status, abi.evtchn_status, {"dom": abi.DOMID_SELF, "port": 9999}, -abi.EINVAL),
    (abi.EVTCHNOP_bind_ipi, abi.evtchn_bind_ipi, {"vcpu": 5}, -abi.ENOENT),
    (abi.EVTCHNOP_bind_vcpu, abi.evtchn_bind_vcpu, {"port": 0, "vcpu": 0}, -abi.EINVAL),
    (abi.EVTCHNOP_bind_vcpu, abi.evtchn_bind_vcpu, {"port": 1, "vcpu": 9}, -abi.ENOENT),
    (abi.EVTCHNOP_bind_pirq, abi.evtchn_bind_pirq, {"pirq": 1}, -abi.ENOSYS),
    (abi.EVTCHNOP_init_control, abi.evtchn_init_control, {}, -abi.ENOSYS),
    (abi.EVTCHNOP_reset, abi.evtchn_reset, {"dom": abi.DOMID_SELF}, -abi.ENOSYS),
    (77, abi.evtchn_send, {"port": 1}, -abi.ENOSYS),
])
def test_hostile_event_channel_ops_get_xen_codes(w, cmd, layout, fields, rc):
    _, _, (g1, g2, _), _ = w
    p1, p2 = connect(g1, g2)
    before = (bytes(g2.memory.view), g1.evtchn.open_ports(), g2.evtchn.open_ports())
    assert call_evtchn(g1, cmd, layout, **fields)[0] == rc
    assert (bytes(g2.memory.view), g1.evtchn.open_ports(), g2.evtchn.open_ports()) == before
    assert send(g1, p1) == 0 and g2.evtchn.is_pending(p2)


@pytest.mark.parametrize("cmd", [abi.EVTCHNOP_alloc_unbound, abi.EVTCHNOP_bind_interdomain,
                                 abi.EVTCHNOP_bind_virq, abi.EVTCHNOP_bind_ipi,
                                 abi.EVTCHNOP_bind_vcpu, abi.EVTCHNOP_close, abi.EVTCHNOP_send,
                                 abi.EVTCHNOP_status, abi.EVTCHNOP_unmask])
@pytest.mark.parametrize("arg", [1 << 40, 0x3FFFFE, SI_GFN * 4096 - 2 + (1 << 30)])
def test_bad_pointers_give_efault(w, cmd, arg):
    _, _, (g1, *_), _ = w
    g1.evtchn.bind_ipi(0)
    ports = g1.evtchn.open_ports()
    assert event_channel_op(g1, cmd, arg) == -abi.EFAULT
    assert g1.evtchn.open_ports() == ports


def test_out_fields_go_back_only_on_success_and_keep_the_rest(w):
    _, _, (g1, *_), _ = w
    g1.memory.write(SCRATCH, abi.evtchn_status.pack(dom=abi.DOMID_SELF, port=0) + b"\xEE" * 8)
    assert event_channel_op(g1, abi.EVTCHNOP_status, SCRATCH) == 0
    assert g1.memory.read(SCRATCH + abi.evtchn_status.size, 8) == b"\xEE" * 8


def test_destroying_a_domain_unbinds_its_peers(w):
    table, _, (g1, g2, _), _ = w
    p1, _ = connect(g1, g2)
    table.remove(2)
    assert g1.evtchn.status(abi.DOMID_SELF, p1)["status"] == abi.EVTCHNSTAT_unbound
    assert send(g1, p1) == 0


def test_shared_info_is_private_until_placed_and_keeps_its_bits():
    _, _, (g,) = world(nr_guests=1)
    port = g.evtchn.bind_ipi(0)
    g.evtchn.send(port)
    assert g.evtchn.is_pending(port) and g.memory.read_u64(SI_GFN * 4096 + PENDING) == 0
    g.place_shared_info(SI_GFN)
    assert g.memory.read_u64(SI_GFN * 4096 + PENDING) == 1 << port
