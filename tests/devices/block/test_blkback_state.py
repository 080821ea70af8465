"""blkback's connection saved and taken up again (SplitBackend.save/restore): requests the
frontend published but had not signalled are served by the save, the restored backend
maps the ring at its running indices and binds the frontend's port again, and a bad
saved state changes nothing."""

import pytest

from pyvmm.devices import blkif
from pyvmm.devices.block import Blkback
from pyvmm.devices.xenbus import XenbusState, read_state, write_values
from pyvmm.errors import MigrationError, MigrationStreamError
from tests.devices.test_blkback import DATA_REF, OKAY, RING_REF, Rig, disk, pattern  # noqa: F401 (fixture)


def _write(fe, rid, sector, page, byte):
    fe.page(page)[:] = bytes([byte]) * 4096
    fe.queue(blkif.BLKIF_OP_WRITE, rid, sector, [(page, 0, 7)])


def _move(rig):
    """What a restore does around the saved backend: the old one goes (its ring
    unmapped, its port closed, the frontend's port waiting for domain 0 again), the
    toolstack makes the backend directory anew (Initialising), and a fresh, unstarted
    Blkback stands for the restored VM's."""
    old = rig.be
    old.stop()
    write_values(rig.xs0, old.xenbus.path, {"state": int(XenbusState.Initialising)})
    return Blkback(rig.dom0, rig.xs0, rig.guests[0].domid, 51712, rig.image)


def test_save_serves_requests_in_flight_and_restore_carries_on(disk):
    path, img = disk
    rig = Rig(img)
    fe, be = rig.fe, rig.be
    assert fe.call(blkif.BLKIF_OP_READ, rid=1, sector=0, segs=[(0, 0, 7)]) == OKAY
    for i in range(3):                       # published, never signalled: in flight
        _write(fe, 10 + i, 8 * i, i, 0xA0 + i)
    fe.ring.push_requests()
    assert be.ring.unconsumed_requests() == 3
    state = be.save()
    # the save served them: their responses are in the ring, the backend holds nothing
    assert be.ring.unconsumed_requests() == 0
    assert [(r[0], r[2]) for r in fe.responses()] == [(10, OKAY), (11, OKAY), (12, OKAY)]
    assert state == {"state": int(XenbusState.Connected), "error": None, "connect_error": None,
                     "rings": {"ring-ref": [RING_REF, 4, 4]}, "port": fe.port,
                     "served": [0, 0, 4]}
    img.flush()
    assert img.read(0, 3 * 4096) == b"".join(bytes([0xA0 + i]) * 4096 for i in range(3))

    fresh = _move(rig)
    assert not rig.dom0.grant_table.mappings()                 # the old one let go
    fresh.restore(state)
    assert fresh.connected and fresh.served[OKAY] == 4
    assert fresh.ring.req_cons == fresh.ring.rsp_prod_pvt == 4
    assert rig.guests[0].grant_table.pins(RING_REF) == (0, 1)
    assert read_state(rig.xs0, fresh.xenbus.path) == XenbusState.Connected
    assert rig.xs0.read(f"{fresh.xenbus.path}/sectors") == str(img.size // 512).encode()
    # the frontend goes on with the same ring and port, and the restored backend answers
    fe.page(5)[:] = bytes(4096)
    assert fe.call(blkif.BLKIF_OP_READ, rid=20, sector=8, segs=[(5, 0, 7)]) == OKAY
    assert bytes(fe.page(5)) == b"\xA1" * 4096
    assert fresh.served[OKAY] == 5
    # and a close from the frontend still reaches it (the watch is back)
    fe.xenbus.close()
    assert read_state(rig.xs0, fresh.xenbus.path) == XenbusState.Closed and not fresh.connected


def test_a_disconnected_backend_restores_disconnected(disk):
    path, img = disk
    rig = Rig(img)
    rig.be.disconnect("gone")               # Closing, rings dropped (then Closed as the frontend follows)
    state = rig.be.save()
    assert state["rings"] is None and state["port"] is None and state["error"].endswith("gone")
    assert state["state"] in (XenbusState.Closing, XenbusState.Closed)
    fresh = _move(rig)
    fresh.restore(state)
    # resumed at the saved state, it looks at the frontend's (Closed) and follows it
    assert fresh.xenbus.state == XenbusState.Closed and not fresh.connected
    assert rig.xs0.read(f"{fresh.xenbus.path}/error").endswith(b"gone")


@pytest.mark.parametrize("change, problem", [
    (lambda s: s.update(state=0), r"'state': 0 is not one of"),
    (lambda s: s.update(rings={"ring-ref": [RING_REF, 4]}), r"not \[grant ref, req_cons, rsp_prod_pvt\]"),
    (lambda s: s.update(rings={"other": [RING_REF, 4, 4]}), r"is not a map of \['ring-ref'\]"),
    (lambda s: s.update(port=0), r"'port': 0 is outside"),
    (lambda s: s.update(served=[1, 2]), r"'served'"),
    (lambda s: s.update(extra=1), r"unknown field\(s\) 'extra'"),
    (lambda s: s["rings"].update({"ring-ref": [DATA_REF + 400, 4, 4]}), r"cannot be made again"),
    (lambda s: s.update(port=999), r"cannot be made again"),          # a free port, not waiting
    (lambda s: s["rings"].update({"ring-ref": [RING_REF, 40, 4]}), r"cannot be made again"),
])
def test_a_bad_saved_connection_is_refused_and_nothing_stays_mapped(disk, change, problem):
    path, img = disk
    rig = Rig(img)
    state = rig.be.save()
    change(state)
    fresh = _move(rig)
    with pytest.raises(MigrationStreamError, match=problem):
        fresh.restore(state)
    assert not fresh.connected and fresh.port is None and not rig.dom0.grant_table.mappings()
    assert rig.guests[0].grant_table.pins(RING_REF) == (0, 0)
    assert rig.dom0.evtchn.open_ports() == []


def test_restore_into_a_started_backend_is_refused(disk):
    path, img = disk
    rig = Rig(img)
    with pytest.raises(MigrationError, match="restore into a backend that has started"):
        rig.be.restore(rig.be.save())
    assert rig.be.connected
