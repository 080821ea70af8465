"""Grant tables, event channels and xenstore: save, restore into a freshly built set of
domains (after guest RAM), and the guests see the same tables, ports and nodes; bad
states are refused with the field named and nothing changes."""

import pytest

from pyvmm.errors import MigrationError, MigrationStreamError
from pyvmm.migrate.stream import decode_value, encode_value
from pyvmm.pv import abi
from pyvmm.pv.xenstore import LocalClient, Perm, Xenstore
from tests.pv.pvworld import DATA_GFN, GRANT_FRAMES, world

HOST = abi.GNTMAP_host_map


def _carried(state):
    return decode_value(encode_value(state))


def _copy_ram(src, dst):
    dst.memory.write(0, bytes(src.memory.view))


# --- grant tables -------------------------------------------------------------------

def test_grant_table_restores_entries_and_drops_the_old_vmms_pins():
    _, dom0, (g1, _) = world()
    g1.grant_table.grow(2)
    g1.grant_table.grant_access(300, 0, DATA_GFN)
    g1.grant_table.grant_access(7, 0, DATA_GFN + 1, readonly=True)
    dom0.grant_table.map_grant_ref(HOST, 300, 1)          # the old backend's mapping
    state = _carried(g1.grant_table.save())
    assert state == {"frames": GRANT_FRAMES, "nr_frames": 2, "pinned": [300]}

    _, new0, (n1, _) = world()
    _copy_ram(g1, n1)
    n1.grant_table.restore(state)
    assert n1.grant_table.frames == GRANT_FRAMES[:2]
    assert n1.grant_table.read_entry(300)["flags"] == abi.GTF_permit_access   # no stale pin
    assert n1.grant_table.read_entry(7) == g1.grant_table.read_entry(7)
    m = new0.grant_table.map_grant_ref(HOST, 300, 1)       # the new backend maps again
    m.page[0:2] = b"ok"
    assert n1.memory.read(DATA_GFN * 4096, 2) == b"ok"
    new0.grant_table.unmap_grant_ref(m.handle)
    assert n1.grant_table.end_access(300)


def test_a_domain_holding_mappings_cannot_be_saved():
    _, dom0, (g1, _) = world()
    g1.grant_table.grant_access(1, 0, DATA_GFN)
    dom0.grant_table.map_grant_ref(HOST, 1, 1)
    with pytest.raises(MigrationError, match=r"domain 0 holds 1 grant mapping\(s\).*unmap them"):
        dom0.grant_table.save()


@pytest.mark.parametrize("change, match", [
    ({"frames": [0x100, 0x100]}, r"'frames': \[256, 256\] repeats a frame"),
    ({"frames": [0x100, 1 << 30]}, r"frame 0x40000000 is not a frame domain 1 owns"),
    ({"nr_frames": 5}, r"'nr_frames': 5 is outside 0..4"),
    ({"pinned": [512]}, r"'pinned\[0\]': 512 is outside 0..511"),
])
def test_bad_grant_table_state_is_refused(change, match):
    _, _, (g1, _) = world()
    state = dict(g1.grant_table.save(), **change)
    _, _, (n1, _) = world()
    before = n1.grant_table.save()
    with pytest.raises(MigrationStreamError, match=match):
        n1.grant_table.restore(state)
    assert n1.grant_table.save() == before


# --- event channels ------------------------------------------------------------------

def _statuses(dom):
    chans = dom.evtchn
    return [chans.status(abi.DOMID_SELF, p) for p in range(len(chans._ports))]


def _busy_channels():
    table, dom0, (g1, g2) = world(nr_vcpus=2)
    timer = g1.evtchn.bind_virq(abi.VIRQ_TIMER, vcpu=1)
    ipi = g1.evtchn.bind_ipi(0)
    for_dom0 = g1.evtchn.alloc_unbound(remote_dom=0)
    wait = g2.evtchn.alloc_unbound(remote_dom=1)
    link = g1.evtchn.bind_interdomain(2, wait)
    g1.evtchn.send_virq(abi.VIRQ_TIMER, vcpu=1)          # pending, upcall raised on vCPU 1
    return (g1, g2), {"timer": timer, "ipi": ipi, "for_dom0": for_dom0, "wait": wait, "link": link}


def test_event_channels_restore_ports_links_and_pending_bits():
    (g1, g2), ports = _busy_channels()
    states = [_carried(g.evtchn.save()) for g in (g1, g2)]
    _, _, (n1, n2) = world(nr_vcpus=2)
    for old, new, state in ((g1, n1, states[0]), (g2, n2, states[1])):
        _copy_ram(old, new)
        new.evtchn.restore(state)
    assert _statuses(n1) == _statuses(g1) and _statuses(n2) == _statuses(g2)
    assert n1.evtchn.is_pending(ports["timer"]) and n1.evtchn.upcall_pending(1)
    n1.evtchn.send(ports["link"])                          # the relinked pair carries events
    assert n2.evtchn.is_pending(ports["wait"])
    n2.evtchn.send(ports["wait"])
    assert n1.evtchn.is_pending(ports["link"])
    assert n1.evtchn.bind_virq(abi.VIRQ_TIMER, vcpu=0) == len(n1.evtchn._ports) - 1
    with pytest.raises(Exception, match="already port"):
        n1.evtchn.bind_virq(abi.VIRQ_TIMER, vcpu=1)        # the restored binding is known


def test_a_peer_that_is_not_restored_leaves_the_port_unbound_for_it():
    (g1, _), ports = _busy_channels()
    state = g1.evtchn.save()
    _, _, (n1, _) = world(nr_vcpus=2)
    n1.evtchn.restore(state)
    assert n1.evtchn.status(abi.DOMID_SELF, ports["link"]) == {
        "status": abi.EVTCHNSTAT_unbound, "vcpu": 0, "u": {"unbound": {"dom": 2}}}


@pytest.mark.parametrize("port, change, match", [
    (0, {"state": 2}, r"port 0 state field 'state': 2 is not one of \[1\]"),
    (1, {"virq": None}, r"port 1 state field 'virq': None on vCPU 1"),
    (2, {"vcpu": 2}, r"port 2 state field 'vcpu': 2 is outside 0..1"),
    (3, {"remote_domid": None}, r"port 3 state field 'remote_domid': None for channel state 2"),
    (4, {"remote": [2]}, r"port 4 state field 'remote': \[2\] is not \[domid, port\]"),
    (4, {"state": 4}, r"'state': 4 is not one of"),
    (4, {"remote": None}, r"port 4 state field 'remote': None is not \[domid, port\]"),
])
def test_bad_event_channel_state_is_refused(port, change, match):
    (g1, _), _ = _busy_channels()
    state = g1.evtchn.save()
    state["ports"][port] = dict(state["ports"][port], **change)
    _, _, (n1, _) = world(nr_vcpus=2)
    n1.evtchn.bind_ipi(0)
    before = n1.evtchn.save()
    with pytest.raises(MigrationStreamError, match=match):
        n1.evtchn.restore(state)
    assert n1.evtchn.save() == before


def test_a_virq_bound_twice_is_refused():
    (g1, _), ports = _busy_channels()
    state = g1.evtchn.save()
    state["ports"].append(dict(state["ports"][ports["timer"]]))
    _, _, (n1, _) = world(nr_vcpus=2)
    with pytest.raises(MigrationStreamError, match=r"VIRQ 0 on vCPU 1 is bound twice"):
        n1.evtchn.restore(state)


# --- xenstore ------------------------------------------------------------------------

def _store():
    store = Xenstore()
    c = LocalClient(store)
    c.write("/local/domain/1/name", "guest")
    c.write("/local/domain/1/device/vbd/51712/state", "4")
    c.set_perms("/local/domain/1/device/vbd/51712", [Perm(1, "n"), Perm(0, "r")])
    c.write("/vm/uuid", b"\x00\xffraw")
    return store


def _view(store):
    c = LocalClient(store)
    out = {}
    for path, _, _ in store.save():
        out[path] = (c.read(path), c.get_perms(path), c.directory(path))
    return out


def test_xenstore_restores_values_permissions_and_listings():
    store = _store()
    nodes = _carried([list(n) for n in store.save()])
    other = Xenstore()
    other.restore([tuple(n) for n in nodes])
    assert _view(other) == _view(store)
    guest = LocalClient(other, domid=1)
    assert guest.get_perms("device/vbd/51712") == [Perm(1, "n"), Perm(0, "r")]   # domain 1 owns it
    guest.write("device/vbd/51712/mode", "w")
    LocalClient(other).write("/local/domain/1/name", "renamed")   # the store works on


@pytest.mark.parametrize("nodes, match", [
    ([("/", b"", "n0"), ("/a/b", b"", "n0")], r"node 1: /a/b comes before its parent"),
    ([("/a", b"", "n0")], r"node 0: /a comes before its parent \(the root must be first\)"),
    ([("/", b"", "n0"), ("/a", b"", "n0"), ("/a", b"", "n0")], r"node 2: /a is listed twice"),
    ([("/", b"", "x0")], r"node 0: permissions 'x0' are not"),
    ([("/", b"", "n0"), ("a", b"", "n0")], r"node 1: path 'a' is not absolute"),
    ([("/", b"", "n0"), ("/a//b", b"", "n0")], r"node 1: path '/a//b' has an empty component"),
    ([("/", "text", "n0")], r"node 0 \(/\): value is not bytes"),
    ([("/", b"", "n99999")], r"name a domid above"),
    ([], r"no nodes"),
])
def test_bad_xenstore_nodes_are_refused(nodes, match):
    store = _store()
    before = store.save()
    with pytest.raises(MigrationStreamError, match=match):
        store.restore(nodes)
    assert store.save() == before
