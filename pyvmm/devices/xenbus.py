"""The xenbus frontend/backend handshake (xen/include/public/io/xenbus.h), driven through xenstore.

Responsibility: the ``XenbusState`` numbers, where a device's two xenstore
directories live, how the toolstack creates them, and the state machine each end
runs on its own ``state`` node while watching its peer's:

    backend:  Initialising -> InitWait (its details written)
    frontend: Initialising -> Initialised (ring-ref, event-channel ... written)
    backend:  -> Connected (``connect`` accepted the frontend's details)
    frontend: -> Connected (read the backend's details)
    close:    frontend Closing -> backend Closing (``disconnect``) -> frontend Closed
              -> backend Closed

Either end works with any xenstore client (``LocalClient`` in dom0, ``RingClient``
over a guest's ring page).

Invariants: a watch event is only a hint: each step re-reads the peer's state, so a
repeated, late or lost-and-coalesced event cannot make an end skip or repeat a
transition. A peer state that is garbage reads as ``Unknown``. The details an end
publishes are written in one transaction (retried on EAGAIN) before its state
changes, so the peer never sees the new state without them. A frontend whose
details ``connect`` refuses gets ``error`` written and the backend goes Closing.
"""

import enum

from pyvmm.errors import PyvmmError, XenstoreError
from pyvmm.pv.xenstore import Perm, domain_path

__all__ = ["XenbusState", "frontend_path", "backend_path", "create_device", "read_state",
           "XenbusBackend", "XenbusFrontend"]

TRANSACTION_RETRIES = 8


class XenbusState(enum.IntEnum):
    """``enum xenbus_state`` (io/xenbus.h)."""

    Unknown = 0
    Initialising = 1
    InitWait = 2
    Initialised = 3
    Connected = 4
    Closing = 5
    Closed = 6
    Reconfiguring = 7
    Reconfigured = 8


def frontend_path(frontend_domid, devtype, devid):
    """``/local/domain/<front>/device/<type>/<devid>``, as Linux's xenbus_probe_frontend reads."""
    return f"{domain_path(frontend_domid)}/device/{devtype}/{devid}"


def backend_path(backend_domid, devtype, frontend_domid, devid):
    """``/local/domain/<back>/backend/<type>/<front>/<devid>``."""
    return f"{domain_path(backend_domid)}/backend/{devtype}/{frontend_domid}/{devid}"


def write_values(client, directory, values):
    """Write ``values`` (name -> str/bytes/int) under ``directory`` in one transaction."""
    for _ in range(TRANSACTION_RETRIES):
        tx = client.transaction_start()
        try:
            for name, value in values.items():
                client.write(f"{directory}/{name}", str(value) if isinstance(value, int) else value,
                             tx=tx)
        except XenstoreError:
            client.transaction_end(tx, commit=False)
            raise
        try:
            client.transaction_end(tx)
            return
        except XenstoreError as err:
            if err.errno_name != "EAGAIN":
                raise
    raise XenstoreError("EAGAIN", f"writing {sorted(values)} under {directory}: "
                                  f"{TRANSACTION_RETRIES} transactions conflicted")


def create_device(client, devtype, frontend_domid, devid, backend_domid=0, backend_values=None):
    """The toolstack's part: both directories, linked, with state Initialising.

    The frontend directory is owned by the frontend (the backend may read it); the
    backend directory by the backend (the frontend may read it). Returns
    ``(frontend_path, backend_path)``.
    """
    fe = frontend_path(frontend_domid, devtype, devid)
    be = backend_path(backend_domid, devtype, frontend_domid, devid)
    write_values(client, fe, {"backend": be, "backend-id": backend_domid,
                              "state": int(XenbusState.Initialising)})
    write_values(client, be, {"frontend": fe, "frontend-id": frontend_domid, "online": 1,
                              "state": int(XenbusState.Initialising), **(backend_values or {})})
    for path, owner, peer in ((fe, frontend_domid, backend_domid), (be, backend_domid, frontend_domid)):
        perms = [Perm(owner, "n"), Perm(peer, "r")]
        for name in [""] + client.directory(path):
            client.set_perms(f"{path}/{name}" if name else path, perms)
    return fe, be


def read_state(client, directory):
    """The ``state`` under ``directory``; Unknown if missing, unreadable or not a state."""
    try:
        text = client.read(f"{directory}/state").decode("ascii", "replace").strip()
    except XenstoreError:
        return XenbusState.Unknown
    if not text.isdigit() or int(text) not in XenbusState._value2member_map_:
        return XenbusState.Unknown
    return XenbusState(int(text))


class _XenbusEnd:
    """What both ends share: their own directory and state, the peer's, and the watch."""

    peer_key = ""

    def __init__(self, client, path):
        self.client = client
        self.path = path
        self.peer = client.read(f"{path}/{self.peer_key}").decode()
        self.state = read_state(client, path)
        self._token = None

    def switch(self, state, values=None):
        """Publish ``values`` (if any), then the new state, atomically."""
        write_values(self.client, self.path, {**(values or {}), "state": int(state)})
        self.state = XenbusState(state)

    def read_peer(self, keys):
        """The peer's values for ``keys``; XenstoreError names the first missing one."""
        return {key: self.client.read(f"{self.peer}/{key}").decode() for key in keys}

    def _watch_peer(self):
        self._token = self.client.watch(f"{self.peer}/state", lambda path, token: self._peer_changed())

    def stop(self):
        if self._token is not None:
            self.client.unwatch(f"{self.peer}/state", self._token)
            self._token = None

    def _peer_changed(self):
        raise NotImplementedError


class XenbusBackend(_XenbusEnd):
    """A backend's end: ``connect(frontend_values)`` when the frontend is ready.

    ``details`` are written before InitWait (e.g. sectors, sector-size, features);
    ``required`` names the frontend keys ``connect`` receives; ``connect`` raises
    PyvmmError to refuse (bad ring-ref, event channel ...). ``disconnect()`` runs once
    when a connected device closes.
    """

    peer_key = "frontend"

    def __init__(self, client, path, details, required, connect, disconnect):
        super().__init__(client, path)
        self.details = dict(details)
        self.required = list(required)
        self.connect = connect
        self.disconnect = disconnect
        self.error = None

    def start(self):
        self.switch(XenbusState.InitWait, self.details)
        self._watch_peer()

    def resume(self, state, values=None):
        """Take up a saved end at ``state`` (a restore: both directories exist, the
        peer's as it was saved): publish ``values`` and the state, then watch the
        peer. The watch's first event re-reads the peer's state, so a handshake that
        was half done when saved goes on from there."""
        self.switch(state, values)
        self._watch_peer()

    def _peer_changed(self):
        peer = read_state(self.client, self.peer)
        if peer in (XenbusState.Initialised, XenbusState.Connected) \
                and self.state == XenbusState.InitWait:
            try:
                values = self.read_peer(self.required)
                self.connect(values)
            except PyvmmError as err:
                self.error = str(err)
                self.switch(XenbusState.Closing, {"error": self.error})
                return
            self.switch(XenbusState.Connected)
        elif peer == XenbusState.Closing and self.state not in (XenbusState.Closing,
                                                                 XenbusState.Closed):
            self._close(XenbusState.Closing)
        elif peer in (XenbusState.Closed, XenbusState.Unknown) and self.state != XenbusState.Closed \
                and self.state != XenbusState.InitWait:
            self._close(XenbusState.Closed)

    def _close(self, state):
        if self.state == XenbusState.Connected:
            self.disconnect()
        self.switch(state)


class XenbusFrontend(_XenbusEnd):
    """A frontend's end: publishes ``details(backend)`` then uses the backend's values.

    ``details()`` returns the keys to publish (ring-ref, event-channel, protocol ...)
    when the backend reached InitWait; ``backend_keys`` are read once the backend is
    Connected and handed to ``connected(values)``.
    """

    peer_key = "backend"

    def __init__(self, client, path, details, backend_keys, connected):
        super().__init__(client, path)
        self.details = details
        self.backend_keys = list(backend_keys)
        self.connected = connected
        self.backend_values = None

    def start(self):
        self._watch_peer()

    def close(self):
        """Begin an orderly close (the unplug path)."""
        self.switch(XenbusState.Closing)

    def _peer_changed(self):
        peer = read_state(self.client, self.peer)
        if peer == XenbusState.InitWait and self.state == XenbusState.Initialising:
            self.switch(XenbusState.Initialised, self.details())
        elif peer == XenbusState.Connected and self.state == XenbusState.Initialised:
            self.backend_values = self.read_peer(self.backend_keys)
            self.connected(self.backend_values)
            self.switch(XenbusState.Connected)
        elif peer in (XenbusState.Closing, XenbusState.Closed) \
                and self.state not in (XenbusState.Closed, XenbusState.Unknown):
            self.switch(XenbusState.Closed)
