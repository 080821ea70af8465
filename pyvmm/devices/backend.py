"""The backend half of a Xen split driver, in domain 0: what blkback and netback share.

Responsibility: the mechanics every split-driver backend runs for one (frontend
domain, device) pair, whatever its protocol:
- the xenbus backend side of the handshake (``XenbusBackend``): publish the
  device's details, wait for the frontend's ring references and event channel;
- attaching the shared rings: each ``<name>-ref`` the frontend publishes is mapped
  through the frontend's grant table (GNTMAP_host_map, as ``xenbus_map_ring`` does)
  and read as a ``BackRing`` of its layout (``BACK_RING_ATTACH``, io/ring.h);
  binding the interdomain event channel;
- the request loop of io/ring.h: take the requests published now, let the device
  serve them (it writes the responses), push the responses and notify the frontend
  only if ``rsp_event`` asks for it, then ``RING_FINAL_CHECK_FOR_REQUESTS`` (re-arm
  ``req_event`` and look once more);
- disconnecting a frontend that breaks the ring protocol;
- mapping the frontend's granted data pages for the span of one request
  (``frontend_pages``), or for one copy (``copy_from_frontend``/``copy_to_frontend``).

A device subclass names its rings (``RINGS``), the ring ``process()`` serves
(``REQUEST_RING``) and implements ``serve(requests)``; it may refuse the frontend's
other values in ``check_frontend`` (which also sees the optional keys the frontend
published, ``FRONTEND_OPTIONAL_KEYS``: features it negotiates), act after each push
in ``after_push``, and drop what it kept for the connection in ``drop_connection``.

Invariants:
- The rings are never served before xenbus says Connected: the event channel gets
  its callback only after the whole connection is made, and ``process`` checks the
  state each time.
- A connection that fails part way (an unmappable ring-ref, an unbindable port)
  undoes what it made: no ring stays mapped, no port stays bound.
- A frontend that breaks the protocol (``RingError`` from the ring, or from the
  device's ``serve``: a producer further ahead than the ring holds, a request chain
  past what was published) is disconnected: every ring unmapped, the event channel
  closed, xenbus Closing with ``error`` written. Nothing of that batch reaches the
  device's resources, and other devices and domains are not touched.
- Data pages are mapped only inside ``frontend_pages`` or a copy and unmapped when it ends,
  also when a mapping or the work fails; between requests the backend holds only
  its ring mappings, and what a device keeps for the connection (blkback's
  persistent grants), which ``drop_connection`` releases before the rings go.
- ``process`` is not re-entered (a notification raised while serving is looked at
  by the final check of the running loop).

Save/restore (docs/migration-stream.md, "Disks"): ``save`` takes the connection as
plain values (xenbus state, errors, each ring's grant reference and private indices,
the frontend's event-channel port) after ``process`` served every request already
on the request ring, so none is in flight; ``restore`` takes it up in a fresh,
unstarted backend of a restored VM (the frontend's grant table, event channels and
xenstore directory already restored): it maps the rings again at their indices,
binds the frontend's port again and resumes xenbus at the saved state, as if the
backend had never gone. It checks everything before it maps anything, and undoes
a part-made connection when a mapping or the bind is refused.
"""

from pyvmm.devices.ring import BackRing
from pyvmm.devices.xenbus import XenbusBackend, XenbusState, backend_path
from pyvmm.errors import MigrationError, MigrationStreamError, PyvmmError, RingError, XenstoreError
from pyvmm.migrate.state import StateFields
from pyvmm.pv import abi

__all__ = ["SplitBackend", "FrontendPages", "EVENT_CHANNEL_KEY", "frontend_int", "close_all"]

EVENT_CHANNEL_KEY = "event-channel"      # the frontend's unbound port (xenbus convention)
_READ_ONLY = abi.GNTMAP_host_map | abi.GNTMAP_readonly


def close_all(devices):
    """Close every device in ``devices`` (vbds, vifs: the VM is going away); the first
    error is raised after all are closed."""
    first = None
    for device in devices:
        try:
            device.close()
        except PyvmmError as err:
            first = first or err
    if first is not None:
        raise first


def frontend_int(values, key):
    """The frontend's xenstore value ``key`` as a decimal number (PyvmmError if it is not)."""
    text = values[key].strip()
    if not text.isdigit():
        raise PyvmmError(f"frontend {key} {values[key]!r} is not a decimal number")
    return int(text)


class FrontendPages:
    """Pages a frontend granted, mapped now and unmapped when the ``with`` body ends.

    A plain class rather than a generator context manager: netback maps a page per
    packet slot, and contextlib's machinery was a fifth of its time per frame.
    """

    __slots__ = ("table", "mappings", "pages")

    def __init__(self, table, flags, refs, frontend_domid):
        self.table = table
        self.mappings = []
        try:
            for ref in refs:
                self.mappings.append(table.map_grant_ref(flags, ref, frontend_domid))
        except BaseException:
            self.release()
            raise
        self.pages = [m.page for m in self.mappings]

    def __enter__(self):
        return self.pages

    def __exit__(self, *exc):
        self.release()

    def release(self):
        while self.mappings:
            self.table.unmap_grant_ref(self.mappings.pop().handle)


class SplitBackend:
    """One split-driver backend for device ``devid`` of domain ``frontend_domid``.

    ``backend`` is the Python-side domain (domain 0) that maps grants and owns the
    event channel; ``client`` its xenstore client; ``details`` what the backend
    publishes before InitWait. Subclasses set:

    - ``DEVTYPE``: the xenstore device type ("vbd", "vif");
    - ``RINGS``: ((xenstore key of the ring's grant reference, RingLayout), ...);
    - ``REQUEST_RING``: the key of the ring ``process()`` consumes;
    - ``FRONTEND_KEYS``: other keys the frontend must publish (``check_frontend``
      sees them with the ring references and the event channel);
    - ``FRONTEND_OPTIONAL_KEYS``: keys the frontend may publish (features);
      ``check_frontend`` sees those present.

    ``rings`` maps each key to its BackRing while connected (empty otherwise);
    ``port`` is the bound event channel; ``error`` says why the frontend was
    disconnected.
    """

    DEVTYPE = None
    RINGS = ()
    REQUEST_RING = None
    FRONTEND_KEYS = ()
    FRONTEND_OPTIONAL_KEYS = ()

    def __init__(self, backend, client, frontend_domid, devid, details):
        self.backend = backend
        self.frontend_domid = frontend_domid
        self.devid = devid
        self.name = f"{self.DEVTYPE}{frontend_domid}.{devid}"
        self.rings = {}
        self.ring_mappings = []
        self.port = None
        self.error = None
        self._busy = False
        keys = [key for key, _ in self.RINGS] + [EVENT_CHANNEL_KEY] + list(self.FRONTEND_KEYS)
        path = backend_path(backend.domid, self.DEVTYPE, frontend_domid, devid)
        self.xenbus = XenbusBackend(client, path, details, keys, self._connect, self._teardown)

    def start(self):
        """Begin the handshake (the toolstack created both directories)."""
        self.xenbus.start()

    @property
    def connected(self):
        return bool(self.rings) and self.xenbus.state == XenbusState.Connected

    # --- what a device provides ---------------------------------------------------

    def check_frontend(self, values):
        """Refuse the frontend's values (raise PyvmmError) before anything is mapped."""

    def serve(self, requests):
        """Serve ``requests`` (copies taken off REQUEST_RING), writing one response per
        slot the protocol answers; return what ``after_push`` needs. Raise RingError
        (before writing any response) for a breach that disconnects the frontend."""
        raise NotImplementedError

    def after_push(self, served):
        """Runs after the responses of a batch are pushed, with ``serve``'s result."""

    def drop_connection(self):
        """Release what the device kept for this connection (runs at every teardown,
        before the rings are unmapped; idempotent)."""

    # --- connection ------------------------------------------------------------------

    def frontend_features(self):
        """The FRONTEND_OPTIONAL_KEYS the frontend published, with their values."""
        values = {}
        for key in self.FRONTEND_OPTIONAL_KEYS:
            try:
                values[key] = self.xenbus.client.read(f"{self.xenbus.peer}/{key}").decode()
            except XenstoreError:
                pass                     # not published: the frontend does not offer it
        return values

    def _connect(self, values):
        """XenbusBackend's connect: map every ring, bind the event channel (PyvmmError refuses)."""
        values.update(self.frontend_features())
        self.check_frontend(values)
        refs = [(key, layout, frontend_int(values, key)) for key, layout in self.RINGS]
        remote_port = frontend_int(values, EVENT_CHANNEL_KEY)
        table = self.backend.grant_table
        rings = {}
        try:
            for key, layout, ref in refs:
                mapping = table.map_grant_ref(abi.GNTMAP_host_map, ref, self.frontend_domid)
                self.ring_mappings.append(mapping)
                rings[key] = BackRing(mapping.page, layout)
            port = self.backend.evtchn.bind_interdomain(self.frontend_domid, remote_port)
        except PyvmmError:
            self._teardown()
            raise
        self.rings, self.port = rings, port
        # Bound without a callback first: bind_interdomain raises the new port at once,
        # and the rings must not be served before xenbus says Connected.
        self.backend.evtchn.set_notify(port, self._notified)

    def _teardown(self):
        """Unmap the rings and close the event channel (idempotent)."""
        self.drop_connection()
        if self.port is not None:
            self.backend.evtchn.close(self.port)
            self.port = None
        while self.ring_mappings:
            mapping = self.ring_mappings.pop()
            if mapping.mapped:           # not dropped already (the frontend's domain was destroyed)
                self.backend.grant_table.unmap_grant_ref(mapping.handle)
        self.rings = {}

    def disconnect(self, reason):
        """A protocol breach by the frontend: drop the rings, tell xenbus why."""
        self.error = f"{self.name}: {reason}"
        self._teardown()
        if self.xenbus.state not in (XenbusState.Closing, XenbusState.Closed):
            self.xenbus.switch(XenbusState.Closing, {"error": self.error})

    # --- save / restore ----------------------------------------------------------------

    def save(self):
        """The connection as plain values, with no request in flight: the requests the
        frontend already published are served (and answered) first. MigrationError if
        the request ring cannot be emptied (the frontend broke it meanwhile)."""
        self.process()
        rings = {}
        for (key, _), mapping in zip(self.RINGS, self.ring_mappings):
            ring = self.rings[key]
            rings[key] = [mapping.ref, ring.req_cons, ring.rsp_prod_pvt]
        if self.rings and self.rings[self.REQUEST_RING].unconsumed_requests():
            raise MigrationError(f"{self.name}: requests are still on the ring after serving it")
        remote = self.backend.evtchn.channel(self.port).remote[1] if self.port is not None else None
        return {"state": int(self.xenbus.state), "error": self.error, "connect_error": self.xenbus.error,
                "rings": rings if self.rings else None, "port": remote}

    def restore(self, state):
        """Take up the connection ``save`` gave, in this backend built but not started.
        Refused (MigrationStreamError) before anything changes if a field is bad; a
        ring that cannot be mapped or a port that is not waiting for this domain
        undoes what was made and raises MigrationStreamError."""
        f = StateFields(state, f"{self.name} backend")
        xstate = XenbusState(f.choice("state", [int(s) for s in XenbusState if s != XenbusState.Unknown]))
        error = f.raw("error")
        connect_error = f.raw("connect_error")
        for name, value in (("error", error), ("connect_error", connect_error)):
            if value is not None:
                f.text(name)
        rings = f.raw("rings")
        port = None
        if rings is not None:
            keys = [key for key, _ in self.RINGS]
            if not isinstance(rings, dict) or sorted(rings) != sorted(keys):
                f.fail("rings", f"{rings!r} is not a map of {keys}")
            for key in keys:
                value = rings[key]
                if not (isinstance(value, list) and len(value) == 3
                        and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 32
                                for v in value)):
                    f.fail("rings", f"{key}: {value!r} is not [grant ref, req_cons, rsp_prod_pvt]")
            port = f.integer("port", 1, (1 << 32) - 1)
        elif f.raw("port") is not None:
            f.fail("port", "a port without rings")
        f.done()
        if self.rings or self.port is not None or self.xenbus.state != XenbusState.Initialising:
            raise MigrationError(f"{self.name}: restore into a backend that has started")
        if rings is not None:
            table = self.backend.grant_table
            made = {}
            try:
                for key, layout in self.RINGS:
                    ref, req_cons, rsp_prod_pvt = rings[key]
                    mapping = table.map_grant_ref(abi.GNTMAP_host_map, ref, self.frontend_domid)
                    self.ring_mappings.append(mapping)
                    ring = BackRing(mapping.page, layout, start=req_cons)
                    ring.rsp_prod_pvt = rsp_prod_pvt
                    made[key] = ring
                    ring.unconsumed_requests()      # RingError if the saved indices do not fit the page
                self.port = self.backend.evtchn.bind_interdomain(self.frontend_domid, port)
            except PyvmmError as err:            # GrantError, EventChannelError, RingError
                self._teardown()
                raise MigrationStreamError(f"{self.name} backend: the saved connection cannot be made "
                                           f"again: {err}") from None
            self.rings = made
            self.backend.evtchn.set_notify(self.port, self._notified)
        self.error = error
        self.xenbus.error = connect_error
        self.xenbus.resume(xstate, {**self.xenbus.details, **({"error": error} if error else {})})
        self.process()             # a reconnecting backend looks at its ring once

    def stop(self):
        """Drop the connection and stop watching the frontend (the device is removed)."""
        self._teardown()
        self.xenbus.stop()

    def frontend_pages(self, refs, writable):
        """The pages the frontend granted as ``refs``, mapped for the ``with`` body.

        ``writable`` False maps them read-only (GNTMAP_readonly: the backend only reads
        them, and a read-only grant is enough). All or nothing: GrantError from the
        grant table if any ref is not mappable, with those mapped so far unmapped.
        """
        flags = abi.GNTMAP_host_map | (0 if writable else abi.GNTMAP_readonly)
        return FrontendPages(self.backend.grant_table, flags, refs, self.frontend_domid)

    def copy_from_frontend(self, ref, offset, size):
        """``size`` bytes at ``offset`` of the page granted as ``ref`` (mapped read-only
        for the copy only); GrantError if the frontend did not grant it to us."""
        table = self.backend.grant_table
        mapping = table.map_grant_ref(_READ_ONLY, ref, self.frontend_domid)
        try:
            return bytes(mapping.page[offset:offset + size])
        finally:
            table.unmap_grant_ref(mapping.handle)

    def copy_to_frontend(self, ref, data, offset=0):
        """Write ``data`` at ``offset`` of the page granted as ``ref`` (mapped writable
        for the copy only); GrantError if it is not granted writable to us."""
        table = self.backend.grant_table
        mapping = table.map_grant_ref(abi.GNTMAP_host_map, ref, self.frontend_domid)
        try:
            mapping.page[offset:offset + len(data)] = data
        finally:
            table.unmap_grant_ref(mapping.handle)

    # --- notification and the request loop -----------------------------------------

    def push(self, ring):
        """Publish ``ring``'s responses; notify the frontend if ``rsp_event`` asks."""
        if ring.push_responses():
            self.backend.evtchn.send(self.port)

    def _notified(self, port):
        self.process()

    def process(self):
        """Serve every request on REQUEST_RING, then re-arm ``req_event`` (ring.h final check)."""
        if self._busy or not self.connected:
            return
        self._busy = True
        try:
            while self.rings:
                ring = self.rings[self.REQUEST_RING]
                try:
                    served = self.serve(ring.take_requests())
                except RingError as err:
                    self.disconnect(str(err))
                    return
                self.push(ring)
                self.after_push(served)
                try:
                    if not self.rings or not ring.final_check_for_requests():
                        break
                except RingError as err:
                    self.disconnect(str(err))
                    return
        finally:
            self._busy = False
