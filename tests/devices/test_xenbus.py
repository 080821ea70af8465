"""The xenbus handshake between a guest frontend (xs_wire on a ring page) and a dom0 backend."""

import pytest

from pyvmm.devices.blkif import BLKIF_RING
from pyvmm.devices.ring import BackRing, FrontRing
from pyvmm.devices.xenbus import (XenbusBackend, XenbusFrontend, XenbusState, create_device,
                                  read_state)
from pyvmm.errors import PyvmmError, RingError
from pyvmm.pv.xenstore import LocalClient, RingClient, Xenstore


class Setup:
    """dom0 (backend, toolstack) and guest 1 (frontend) around one store."""

    def __init__(self, refuse=False):
        self.store = Xenstore()
        self.dom0 = LocalClient(self.store)
        self.xs_page = bytearray(4096)
        self.conn = self.store.introduce(1, self.xs_page, notify=lambda: self.guest.poll())
        self.guest = RingClient(self.xs_page, kick=self.conn.handle)
        self.fe_path, self.be_path = create_device(self.dom0, "vbd", 1, 51712)
        self.shared = {8: bytearray(4096)}         # grant ref -> page, as a grant table would map
        self.front_ring = FrontRing(self.shared[8], BLKIF_RING)
        self.back_ring = None
        self.log = []
        self.refuse = refuse
        self.backend = XenbusBackend(
            self.dom0, self.be_path,
            details={"sectors": 2048, "sector-size": 512, "info": 0, "feature-flush-cache": 1},
            required=["ring-ref", "event-channel"],
            connect=self._connect, disconnect=lambda: self.log.append("disconnect"))
        self.frontend = XenbusFrontend(
            self.guest, self.fe_path,
            details=lambda: {"ring-ref": 8, "event-channel": 5, "protocol": "x86_64-abi"},
            backend_keys=["sectors", "sector-size"],
            connected=lambda values: self.log.append(("connected", values)))

    def _connect(self, values):
        if self.refuse or not values["ring-ref"].isdigit() or int(values["ring-ref"]) not in self.shared:
            raise PyvmmError(f"ring-ref {values['ring-ref']!r} is not a granted page")
        self.back_ring = BackRing(self.shared[int(values["ring-ref"])], BLKIF_RING)
        self.log.append(("connect", values))

    def states(self):
        return read_state(self.dom0, self.fe_path), read_state(self.dom0, self.be_path)


def test_toolstack_creates_linked_directories():
    s = Setup()
    assert s.dom0.read(f"{s.fe_path}/backend").decode() == s.be_path
    assert s.dom0.read(f"{s.be_path}/frontend").decode() == s.fe_path
    assert s.fe_path == "/local/domain/1/device/vbd/51712"
    assert s.be_path == "/local/domain/0/backend/vbd/1/51712"
    assert s.guest.read(f"{s.be_path}/state") == b"1"          # the guest may read the backend


def test_full_handshake_and_close():
    s = Setup()
    s.backend.start()
    assert s.states() == (XenbusState.Initialising, XenbusState.InitWait)
    s.frontend.start()             # its initial watch event sees InitWait: publish and go on
    assert s.states() == (XenbusState.Connected, XenbusState.Connected)
    assert s.log == [("connect", {"ring-ref": "8", "event-channel": "5"}),
                     ("connected", {"sectors": "2048", "sector-size": "512"})]
    assert s.dom0.read(f"{s.fe_path}/protocol") == b"x86_64-abi"

    # The connected pair can use the ring they agreed on.
    s.front_ring.put_request(operation=0, id=1, nr_segments=1, seg=[{"gref": 9, "last_sect": 7}])
    assert s.front_ring.push_requests()
    assert [r["id"] for r in s.back_ring.take_requests()] == [1]

    s.frontend.close()
    assert s.states() == (XenbusState.Closed, XenbusState.Closed)
    assert s.log[-1] == "disconnect" and s.log.count("disconnect") == 1


def test_backend_started_after_frontend_still_connects():
    s = Setup()
    s.frontend.start()
    assert s.states() == (XenbusState.Initialising, XenbusState.Initialising)
    s.backend.start()
    s.guest.poll()
    assert s.states() == (XenbusState.Connected, XenbusState.Connected)


def test_repeated_events_do_not_repeat_transitions():
    s = Setup()
    s.backend.start()
    s.frontend.start()
    for _ in range(3):
        s.backend._peer_changed()
        s.frontend._peer_changed()
    assert [entry[0] for entry in s.log] == ["connect", "connected"]


def test_refused_frontend_details_close_the_backend_with_an_error():
    s = Setup()
    s.frontend.details = lambda: {"ring-ref": "garbage", "event-channel": 5}
    s.backend.start()
    s.frontend.start()
    fe, be = s.states()
    assert be in (XenbusState.Closing, XenbusState.Closed) and fe == XenbusState.Closed
    assert b"garbage" in s.dom0.read(f"{s.be_path}/error")
    assert s.back_ring is None and "disconnect" not in s.log


def test_garbage_state_reads_as_unknown():
    s = Setup()
    s.dom0.write(f"{s.fe_path}/state", "banana")
    assert read_state(s.dom0, s.fe_path) == XenbusState.Unknown
    s.dom0.write(f"{s.fe_path}/state", "99")
    assert read_state(s.dom0, s.fe_path) == XenbusState.Unknown
    assert read_state(s.dom0, "/nowhere") == XenbusState.Unknown


def test_a_frontend_with_a_hostile_ring_is_caught_by_the_backend():
    s = Setup()
    s.backend.start()
    s.frontend.start()
    s.shared[8][0:4] = (10_000).to_bytes(4, "little")          # req_prod far ahead
    with pytest.raises(RingError, match="producer too far ahead"):
        s.back_ring.take_requests()
    assert s.back_ring.req_cons == 0


def test_state_numbers_are_the_headers():
    assert [int(x) for x in XenbusState] == list(range(9))
    assert XenbusState.InitWait == 2 and XenbusState.Reconfigured == 8
