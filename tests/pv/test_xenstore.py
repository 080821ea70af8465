"""xenstore: the store's semantics, dom0's Python API and guests speaking xs_wire on a ring page."""

import struct

import pytest

from pyvmm.errors import MigrationError, MigrationStreamError, XenstoreError
from pyvmm.pv import xenstore as xs
from pyvmm.pv.xenstore import LocalClient, Perm, RingClient, Xenstore
from pyvmm.pv.xs_wire import (XENSTORE_ERROR_NONE, XENSTORE_ERROR_PROTO, XENSTORE_ERROR_RINGIDX,
                              XENSTORE_RECONNECT, XsRingPage, XsType, decode_header,
                              encode_message, join_strings, split_strings)


class Guest:
    """A guest domain: its ring page, its connection in the store, its client."""

    def __init__(self, store, domid):
        self.page = bytearray(4096)
        self.notified = 0
        self.conn = store.introduce(domid, self.page, self._notify)
        self.client = RingClient(self.page, kick=self.conn.handle)

    def _notify(self):
        self.notified += 1


@pytest.fixture
def store():
    return Xenstore()


@pytest.fixture
def dom0(store):
    return LocalClient(store)


@pytest.fixture
def guest(store, dom0):
    g = Guest(store, 1)
    dom0.mkdir("/local/domain/1/data")
    dom0.set_perms("/local/domain/1/data", [Perm(1, "n")])
    return g


def _errno(fn, *args, **kw):
    with pytest.raises(XenstoreError) as info:
        fn(*args, **kw)
    return info.value.errno_name


def test_read_write_directory_mkdir_rm(dom0):
    dom0.write("/vm/a/b", "one")
    assert dom0.read("/vm/a/b") == b"one" and dom0.read("/vm/a") == b""
    dom0.mkdir("/vm/c")
    dom0.mkdir("/vm/c")                         # mkdir of an existing node is fine
    assert dom0.directory("/vm") == ["a", "c"]
    dom0.rm("/vm/a")
    assert dom0.directory("/vm") == ["c"]
    assert _errno(dom0.read, "/vm/a/b") == "ENOENT"
    dom0.rm("/vm/nothing")                      # parent exists: nothing to do
    assert _errno(dom0.rm, "/nope/nothing") == "ENOENT"
    assert _errno(dom0.rm, "/") == "EINVAL"


@pytest.mark.parametrize("path", ["", "/a//b", "/a/", "/a b", "/a\\b", "/é",
                                  "/" + "x" * 3072, "x" * 2049])
def test_invalid_paths_are_refused(dom0, path):
    assert _errno(dom0.write, path, "v") == "EINVAL"
    assert dom0.directory("/") == ["local"]


def test_relative_paths_are_under_the_domain_home(guest, dom0):
    guest.client.write("data/name", "guest1")
    assert dom0.read("/local/domain/1/data/name") == b"guest1"
    assert guest.client.get_domain_path(1) == "/local/domain/1"


def test_permissions_by_domain(guest, dom0, store):
    dom0.write("/secret", "x")
    g = guest.client
    assert _errno(g.read, "/secret") == "EACCES"
    assert _errno(g.write, "/secret", "y") == "EACCES"
    assert _errno(g.write, "/local/domain/1/own", "y") == "EACCES"    # home is dom0's
    dom0.set_perms("/secret", [Perm(0, "n"), Perm(1, "r")])
    assert g.read("/secret") == b"x"
    g.write("data/mine", "1")
    assert g.get_perms("data/mine") == [Perm(1, "n")]            # the creator owns it
    assert _errno(g.set_perms, "data/mine", [Perm(2, "n")]) == "EPERM"
    g.set_perms("data/mine", [Perm(1, "n"), Perm(2, "r")])
    other = Guest(store, 2)
    assert other.client.read("/local/domain/1/data/mine") == b"1"
    assert _errno(other.client.write, "/local/domain/1/data/mine", "2") == "EACCES"


def test_watch_fires_initially_and_on_changes_at_or_below(dom0):
    events = []
    dom0.watch("/be", lambda path, token: events.append((path, token)), token="tok")
    assert events == [("/be", "tok")]
    dom0.write("/be/x/y", "1")
    dom0.write("/bee", "no")                    # a sibling with the same prefix
    dom0.write("/be/x/y", "2")
    assert events[1:] == [("/be/x/y", "tok"), ("/be/x/y", "tok")]
    assert _errno(dom0.watch, "/be", lambda *a: None, token="tok") == "EEXIST"
    dom0.unwatch("/be", "tok")
    dom0.write("/be/z", "1")
    assert len(events) == 3
    assert _errno(dom0.unwatch, "/be", "tok") == "ENOENT"


def test_rm_fires_watches_on_the_node_and_below(dom0):
    dom0.write("/d/a/b", "1")
    events = []
    dom0.watch("/d/a/b", lambda p, t: events.append(p))
    dom0.watch("/d", lambda p, t: events.append(p))
    events.clear()
    dom0.rm("/d/a")
    assert sorted(events) == ["/d/a", "/d/a/b"]


def test_callbacks_may_use_the_store(dom0):
    seen = []

    def mirror(path, token):
        if path == "/src":
            return
        seen.append(path)
        dom0.write("/copy", dom0.read(path))
    dom0.watch("/src", mirror)
    dom0.write("/src/v", "42")
    assert seen == ["/src/v"] and dom0.read("/copy") == b"42"


def test_guest_watch_events_arrive_over_the_ring_with_relative_paths(guest, dom0):
    events = []
    guest.client.watch("data", lambda p, t: events.append(p))
    assert events == ["data"]
    dom0.write("/local/domain/1/data/ring-ref", "8")
    guest.client.poll()
    assert events == ["data", "data/ring-ref"]


def test_guests_only_see_events_for_nodes_they_may_read(guest, dom0):
    events = []
    guest.client.watch("/", lambda p, t: events.append(p))
    dom0.write("/private", "x")
    dom0.write("/local/domain/1/data/visible", "y")
    guest.client.poll()
    assert events == ["/", "/local/domain/1/data/visible"]


def test_transaction_commits_atomically(dom0):
    events = []
    dom0.watch("/t", lambda p, t: events.append(p))
    tx = dom0.transaction_start()
    dom0.write("/t/a", "1", tx=tx)
    dom0.write("/t/b", "2", tx=tx)
    assert dom0.read("/t/a", tx=tx) == b"1"
    assert _errno(dom0.read, "/t/a") == "ENOENT"       # invisible until commit
    assert events == ["/t"]
    dom0.transaction_end(tx)
    assert dom0.read("/t/a") == b"1" and dom0.read("/t/b") == b"2"
    assert events == ["/t", "/t/a", "/t/b"]


def test_transaction_conflict_is_eagain_and_applies_nothing(dom0):
    dom0.write("/t/a", "0")
    tx = dom0.transaction_start()
    assert dom0.read("/t/a", tx=tx) == b"0"
    dom0.write("/t/b", "1", tx=tx)
    dom0.write("/t/a", "other writer")
    assert _errno(dom0.transaction_end, tx) == "EAGAIN"
    assert _errno(dom0.read, "/t/b") == "ENOENT"
    assert _errno(dom0.transaction_end, tx) == "ENOENT"    # it is gone either way


def test_transaction_untouched_nodes_do_not_conflict_and_abort_discards(dom0):
    dom0.mkdir("/t")
    tx = dom0.transaction_start()
    dom0.write("/t/mine", "1", tx=tx)
    dom0.write("/elsewhere", "x")
    dom0.transaction_end(tx)
    assert dom0.read("/t/mine") == b"1"
    tx = dom0.transaction_start()
    dom0.rm("/t", tx=tx)
    dom0.transaction_end(tx, commit=False)
    assert dom0.read("/t/mine") == b"1"


def test_transaction_ids_belong_to_their_client(guest, dom0):
    tx = dom0.transaction_start()
    assert _errno(guest.client.read, "data", tx=tx) == "ENOENT"


def test_guest_transaction_over_the_ring(guest, dom0):
    g = guest.client
    tx = g.transaction_start()
    g.write("data/ring-ref", "9", tx=tx)
    g.write("data/event-channel", "3", tx=tx)
    g.transaction_end(tx)
    assert dom0.directory("/local/domain/1/data") == ["ring-ref", "event-channel"]


def test_large_values_cross_the_1k_rings_in_pieces(guest):
    value = bytes(range(256)) * 15 + b"end"     # 3843 bytes: request and reply both wrap
    for _ in range(3):
        guest.client.write("data/blob", value)
        assert guest.client.read("data/blob") == value


def _raw(guest, *messages):
    """Put raw bytes into the request ring, kick, return the parsed replies."""
    page = XsRingPage(guest.page)
    for m in messages:
        page.client_write(m)
        guest.conn.handle()
    data = page.client_read()
    replies = []
    while data:
        msg_type, req_id, tx_id, length = decode_header(data)
        replies.append((msg_type, req_id, split_strings(data[16:16 + length])))
        data = data[16 + length:]
    return replies


def test_partial_messages_are_assembled(guest):
    msg = encode_message(XsType.XS_GET_DOMAIN_PATH, 77, 0, join_strings("1"))
    assert _raw(guest, msg[:5], msg[5:17], msg[17:]) == [
        (XsType.XS_GET_DOMAIN_PATH, 77, [b"/local/domain/1"])]


def test_bad_type_and_bad_payload_get_xs_error(guest):
    replies = _raw(guest, encode_message(999, 1, 0, b"x\0"),
                   encode_message(XsType.XS_RESUME, 2, 0, b"1\0"),
                   encode_message(XsType.XS_READ, 3, 0, b"\xff\xfe\0"),
                   encode_message(XsType.XS_WATCH, 4, 0, b"onlypath\0"),
                   encode_message(XsType.XS_INTRODUCE, 5, 0, b"3\0" b"1\0" b"1\0"))
    assert replies == [(XsType.XS_ERROR, 1, [b"EINVAL"]), (XsType.XS_ERROR, 2, [b"ENOSYS"]),
                       (XsType.XS_ERROR, 3, [b"EINVAL"]), (XsType.XS_ERROR, 4, [b"EINVAL"]),
                       (XsType.XS_ERROR, 5, [b"EACCES"])]
    assert guest.conn.broken is None and guest.client.read("data") == b""


def test_oversize_len_resets_that_connection_only(store, guest, dom0):
    other = Guest(store, 2)
    header = struct.pack("<IIII", XsType.XS_WRITE, 1, 0, 100000)
    assert _raw(guest, header) == []
    assert guest.conn.broken and "len 100000" in guest.conn.broken
    assert XsRingPage(guest.page).get("error") == XENSTORE_ERROR_PROTO
    assert other.client.get_domain_path(2) == "/local/domain/2"
    assert dom0.read("/local/domain/1/data") == b""
    assert guest.conn.handle() == 0              # stays stopped


def test_impossible_ring_indices_reset_that_connection(guest):
    XsRingPage(guest.page).set("req_prod", 0x80000000)
    guest.conn.handle()
    assert XsRingPage(guest.page).get("error") == XENSTORE_ERROR_RINGIDX
    assert "req ring" in guest.conn.broken


def test_reconnect_clears_rings_and_watches(store, guest):
    guest.client.watch("data", lambda p, t: None)
    page = XsRingPage(guest.page)
    page.client_write(b"\x02\x00\x00")           # half a header, then the guest gives up
    page.set("connection", XENSTORE_RECONNECT)
    guest.conn.handle()
    assert page.get("connection") == 0 and page.get("error") == XENSTORE_ERROR_NONE
    assert page.get("req_prod") == 0 and not any(w.session is guest.conn for w in store.watches)
    guest.client = RingClient(guest.page, kick=guest.conn.handle)
    assert guest.client.read("data") == b""


def test_a_guest_that_never_reads_replies_is_cut_off(guest, dom0, monkeypatch):
    monkeypatch.setattr(xs, "MAX_QUEUED_OUTPUT", 4096)
    guest.client.watch("data", lambda p, t: None)
    for i in range(400):
        dom0.write("/local/domain/1/data/spam", "x" * 1000)
    assert guest.conn.broken and "unread" in guest.conn.broken
    dom0.write("/local/domain/1/data/spam", "still fine")


def test_quotas_bound_what_a_guest_can_hold(guest):
    for i in range(xs.MAX_WATCHES_PER_DOMAIN):
        guest.client.watch(f"data/w{i}", lambda p, t: None)
    assert _errno(guest.client.watch, "data/one-too-many", lambda p, t: None) == "E2BIG"
    txs = [guest.client.transaction_start() for _ in range(xs.MAX_TRANSACTIONS_PER_DOMAIN)]
    assert _errno(guest.client.transaction_start) == "ENOSPC"
    guest.client.transaction_end(txs[0], commit=False)


def test_introduce_and_release_fire_special_watches(store, dom0):
    events = []
    dom0.watch("@introduceDomain", lambda p, t: events.append(p))
    dom0.watch("@releaseDomain", lambda p, t: events.append(p))
    events.clear()
    pages = {}

    def hook(domid, mfn, port):
        pages[domid] = bytearray(4096)
        return pages[domid], lambda: None
    store._introduce_hook = hook
    dom0._request(XsType.XS_INTRODUCE, "5", "1234", "7")
    assert 5 in store.connections and events == ["@introduceDomain"]
    assert dom0._request(XsType.XS_IS_DOMAIN_INTRODUCED, "5") == b"T\0"
    assert _errno(dom0._request, XsType.XS_INTRODUCE, "5", "1234", "7") == "EEXIST"
    dom0._request(XsType.XS_RELEASE, "5")
    assert 5 not in store.connections and events[-1] == "@releaseDomain"
    assert dom0._request(XsType.XS_IS_DOMAIN_INTRODUCED, "5") == b"F\0"


# ---- a guest's connection saved and restored (XsConnection.save/restore) ------------

def test_connection_state_moves_to_a_new_connection_and_goes_on(store, guest, dom0):
    """Watches and half a request saved as plain values; a connection on a fresh ring
    page (the restored guest's) takes them: the half request completes there and a
    change fires the watch over the new ring."""
    events = []
    guest.client.watch("data", lambda path, token: events.append((path, token)), token="tok")
    assert events == [("data", "tok")]
    msg = encode_message(XsType.XS_GET_DOMAIN_PATH, 5, 0, join_strings("1"))
    XsRingPage(guest.page).client_write(msg[:7])
    guest.conn.handle()
    state = guest.conn.save()
    assert state == {"watches": [["data", "/local/domain/1/data", "tok"]], "input": msg[:7], "output": b"",
                     "broken": None}
    store.release(1)                                    # the old connection goes (its watches too)
    moved = Guest(store, 1)
    moved.conn.restore(state)
    assert _raw(moved, msg[7:]) == [(XsType.XS_GET_DOMAIN_PATH, 5, [b"/local/domain/1"])]
    dom0.write("/local/domain/1/data/x", b"1")
    assert _raw(moved) == [(XsType.XS_WATCH_EVENT, 0, [b"data/x", b"tok"])]


def test_a_save_with_an_open_transaction_is_refused(guest):
    guest.client.transaction_start()
    with pytest.raises(MigrationError, match="1 open xenstore transaction"):
        guest.conn.save()


@pytest.mark.parametrize("change, problem", [
    (lambda s: s.update(watches=[["a", "relative", "t"]]), r"is not \[path, absolute path, token\]"),
    (lambda s: s.update(input=b"x" * 5000), r"'input': 5000 bytes, at most"),
    (lambda s: s.update(broken=3), r"'broken': a int"),
    (lambda s: s.pop("output"), r"'output': missing"),
    (lambda s: s.update(more=1), r"unknown field"),
])
def test_a_bad_connection_state_is_refused_and_changes_nothing(guest, change, problem):
    guest.client.watch("data", lambda path, token: None, token="keep")
    state = guest.conn.save()
    before = dict(state)
    change(state)
    with pytest.raises(MigrationStreamError, match=problem):
        guest.conn.restore(state)
    assert guest.conn.save() == before
