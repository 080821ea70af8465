"""Grant tables, version 1 (xen/include/public/grant_table.h).

Responsibility: one domain's grant table in both roles Xen gives it.
- Granting side: the guest-shared array of 8-byte ``grant_entry_v1`` in frames of
  the domain's own RAM (the frames the VMM reserved, handed out by setup_table or
  placed by XENMAPSPACE_grant_table), plus Xen's private "active" state per
  entry (pin counts, the frame and grantee fixed at the first pin).
- Mapping side: the maptrack table of handles for grants this domain mapped.
Operations (map_grant_ref, unmap_grant_ref, copy, setup_table, query_size, and
set/get_version for v1 only) behave as Xen documents and return the same GNTST_*
statuses; ``grant_table_op`` is the hypercall entry point.

Invariants:
- a domain reaches another domain's frame only through a grant entry of that
  domain with GTF_permit_access, its own domid, and no GTF_readonly for writes;
  the frame must be owned by the granter (else GNTST_bad_page);
- while an entry is pinned (mapped), GTF_reading is set, and GTF_writing while a
  writable mapping exists; they clear when the last such mapping goes, and the
  frame and grantee of the first pin hold even if the guest rewrites the entry;
- a pinned frame counts in the granter's ``foreign_pins`` and cannot be released;
- a copy never crosses a page: offset + len > 4096 is GNTST_bad_copy_arg.

Deviation: pyvmm has no hypercall continuations, so a call with more than
``MAX_OPS_PER_CALL`` ops returns -E2BIG before doing any (Xen preempts and resumes).
Host mappings into a guest's RAM need the VMM's ``on_foreign_map`` hook (which may
refuse with a GrantError: the pin is undone); without it a guest's map request fails
with GNTST_general_error. GNTMAP_device_map,
application_map and contains_pte give GNTST_general_error, as for Xen's
translated (HVM/PVH) guests. Only version 1 exists: set_version(2) gives -ENOSYS as
on a Xen with gnttab max_version=1; transfer (deprecated), dump_table (a debug op),
unmap_and_replace, get_status_frames, swap_grant_ref and cache_flush give -ENOSYS.

Save/restore: the entries themselves are guest RAM and travel with it; ``save()``
records where the table lives (its frames, how many are in use) and which entries
are pinned. Pins belong to mappings in the saving VMM's address space, which no
stream can carry: after ``restore`` (done after guest RAM) those entries read as an
unmap would leave them (GTF_reading/GTF_writing clear), and the frontends reconnect
to the new backends as they do after a Xen restore. A domain that itself holds
mappings of other domains' grants cannot be saved (MigrationError) until it unmaps.
"""

import struct

from pyvmm.errors import GrantError, GuestMemoryError, MigrationError
from pyvmm.migrate.state import StateFields
from pyvmm.pv import abi

PAGE_SIZE = abi.PAGE_SIZE
ENTRY_SIZE = abi.grant_entry_v1.size
ENTRIES_PER_FRAME = PAGE_SIZE // ENTRY_SIZE
MAX_OPS_PER_CALL = 4096
_U16 = struct.Struct("<H")
_ENTRY = struct.Struct("<HHI")   # grant_entry_v1: flags, domid, frame (checked against abi below)
_U64 = struct.Struct("<Q")
_FLAGS = abi.grant_entry_v1.offsetof("flags")
_TYPE_MASK = abi.GTF_type_mask | abi.GTF_sub_page   # what a v1 permit entry must match
assert [abi.grant_entry_v1.offsetof(m) for m in ("flags", "domid", "frame")] == [0, 2, 4]
assert _ENTRY.size == ENTRY_SIZE
_PIN_LIMIT = 0xFF                                    # per-kind pin counter width (8 bits in Xen)


def status_text(status):
    """grant_table.h's message for a GNTST_* status."""
    if -len(abi.GNTST_MESSAGES) < status <= 0:
        return abi.GNTST_MESSAGES[-status]
    return f"unknown status {status}"


class _Active:
    """Xen's active grant entry: what the first pin fixed, and the pin counts."""

    __slots__ = ("domid", "gfn", "readers", "writers")

    def __init__(self, domid, gfn):
        self.domid = domid
        self.gfn = gfn
        self.readers = 0
        self.writers = 0

    @property
    def pinned(self):
        return self.readers + self.writers > 0


class GrantMapping:
    """A grant this domain mapped: ``handle`` plus a view of the granted page.

    ``page`` is the granted frame's 4 KiB (read-only for a readonly mapping); it is
    released at unmap, so a backend cannot keep using it afterwards.
    """

    def __init__(self, handle, granter, ref, gfn, readonly, host_addr):
        self.handle = handle
        self.granter = granter
        self.ref = ref
        self.gfn = gfn
        self.readonly = readonly
        self.host_addr = host_addr
        view = granter.page(gfn)
        self._page = view.toreadonly() if readonly else view

    @property
    def page(self):
        if self._page is None:
            raise GrantError(abi.GNTST_bad_handle, f"grant handle {self.handle} is unmapped")
        return self._page

    @property
    def mapped(self):
        return self._page is not None

    def _drop(self):
        self._page.release()
        self._page = None


class GrantTable:
    """The grant table of ``domain``; ``frames`` are gfns the table may occupy."""

    def __init__(self, domain, frames=(), max_maptrack=1024):
        self.domain = domain
        self._pool = list(frames)
        if len(set(self._pool)) != len(self._pool):
            raise ValueError(f"domain {domain.domid}: grant frames {self._pool} repeat a frame")
        for gfn in self._pool:
            domain.page(gfn)  # FrameError unless the domain owns it
        self.nr_frames = 0
        self._active = {}
        self._maptrack = [None] * max_maptrack
        self._held = {}                  # handle -> live GrantMapping (mappings() without a scan)
        self._free_handles = list(range(max_maptrack - 1, -1, -1))
        if self._pool:
            self.grow(1)

    # --- the granting side ---------------------------------------------------------

    @property
    def max_frames(self):
        return len(self._pool)

    @property
    def frames(self):
        """The gfns that currently hold the table, in order."""
        return self._pool[:self.nr_frames]

    @property
    def nr_entries(self):
        return self.nr_frames * ENTRIES_PER_FRAME

    def grow(self, nr_frames):
        """Extend the table to ``nr_frames`` frames (new ones read as zero entries)."""
        if nr_frames > self.max_frames:
            raise GrantError(abi.GNTST_general_error,
                             f"domain {self.domain.domid}: {nr_frames} grant frames asked, "
                             f"at most {self.max_frames}")
        for gfn in self._pool[self.nr_frames:nr_frames]:
            self.domain.page(gfn)[:] = bytes(PAGE_SIZE)
        self.nr_frames = max(self.nr_frames, nr_frames)

    def place_frame(self, idx, gfn):
        """Put table frame ``idx`` at the domain's frame ``gfn`` (XENMAPSPACE_grant_table).

        The frame's entries move along; the table grows to ``idx + 1`` frames.
        """
        if not 0 <= idx < self.max_frames:
            raise GrantError(abi.GNTST_general_error,
                             f"domain {self.domain.domid}: grant frame index {idx} is not below "
                             f"{self.max_frames}")
        target = self.domain.page(gfn)
        if gfn in self._pool and self._pool.index(gfn) != idx:
            raise GrantError(abi.GNTST_general_error,
                             f"domain {self.domain.domid}: frame {gfn:#x} already holds another "
                             "grant frame")
        self.grow(idx + 1)
        target[:] = self.domain.page(self._pool[idx])
        self._pool[idx] = gfn

    def _entry_view(self, ref):
        gfn = self._pool[ref // ENTRIES_PER_FRAME]
        off = (ref % ENTRIES_PER_FRAME) * ENTRY_SIZE
        return self.domain.page(gfn)[off:off + ENTRY_SIZE]

    def read_entry(self, ref):
        """``{"flags", "domid", "frame"}`` of entry ``ref`` as the guest wrote it."""
        self._check_ref(ref)
        return abi.grant_entry_v1.unpack(self._entry_view(ref))

    def write_entry(self, ref, flags, domid, frame):
        """Write entry ``ref`` as the granting guest does (frame and domid before flags)."""
        self._check_ref(ref)
        view = self._entry_view(ref)
        abi.grant_entry_v1.pack_into(view, 0, {"domid": domid, "frame": frame})
        _U16.pack_into(view, _FLAGS, flags)

    def grant_access(self, ref, domid, gfn, readonly=False):
        """Grant domain ``domid`` access to frame ``gfn`` through entry ``ref``."""
        flags = abi.GTF_permit_access | (abi.GTF_readonly if readonly else 0)
        self.write_entry(ref, flags, domid, gfn)

    def end_access(self, ref):
        """Revoke entry ``ref`` as a guest must: only when GTF_reading/GTF_writing are clear.

        Returns True if the grant is now invalid, False if it is still in use.
        """
        self._check_ref(ref)
        view = self._entry_view(ref)
        flags = _U16.unpack_from(view, _FLAGS)[0]
        if flags & (abi.GTF_reading | abi.GTF_writing):
            return False
        _U16.pack_into(view, _FLAGS, 0)
        return True

    def _check_ref(self, ref):
        if not 0 <= ref < self.nr_entries:
            raise GrantError(abi.GNTST_bad_gntref,
                             f"grant ref {ref} of domain {self.domain.domid} is not below "
                             f"{self.nr_entries}")

    def _flags(self, ref):
        return _U16.unpack_from(self._entry_view(ref), _FLAGS)[0]

    def _set_flags(self, ref, set_bits=0, clear_bits=0):
        view = self._entry_view(ref)
        flags = _U16.unpack_from(view, _FLAGS)[0]
        _U16.pack_into(view, _FLAGS, (flags | set_bits) & ~clear_bits & 0xFFFF)

    def _granted_frame(self, ref, grantee, readonly):
        """Xen's checks for ``grantee`` using entry ``ref``: (gfn, GTF bits a pin must set).

        While the entry is pinned, the active entry decides (frame and grantee of the
        first pin); the shared entry is read again only for a first pin or a first
        writable pin. Raises GrantError with Xen's status; changes nothing.
        """
        self._check_ref(ref)
        act = self._active.get(ref)            # present exactly while pinned
        if act is not None:
            if act.domid != grantee.domid:
                raise GrantError(abi.GNTST_general_error,
                                 f"grant {self.domain.domid}:{ref} is pinned by domain {act.domid}, "
                                 f"not {grantee.domid}")
            if max(act.readers, act.writers) >= _PIN_LIMIT:
                raise GrantError(abi.GNTST_general_error,
                                 f"grant {self.domain.domid}:{ref} pin count would overflow")
        bits = 0
        if act is None or (not readonly and not act.writers):
            flags, domid, frame = _ENTRY.unpack_from(self._entry_view(ref))
            if (flags & _TYPE_MASK) != abi.GTF_permit_access or domid != grantee.domid:
                raise GrantError(abi.GNTST_general_error,
                                 f"grant {self.domain.domid}:{ref} has flags {flags:#x} for domain "
                                 f"{domid}; domain {grantee.domid} needs GTF_permit_access for itself")
            if not readonly and flags & abi.GTF_readonly:
                raise GrantError(abi.GNTST_general_error,
                                 f"grant {self.domain.domid}:{ref} is read-only; a writable "
                                 "mapping was asked")
            bits = abi.GTF_reading | (0 if readonly else abi.GTF_writing)
        gfn = act.gfn if act is not None else frame
        if not self.domain.owns(gfn):
            raise GrantError(abi.GNTST_bad_page,
                             f"grant {self.domain.domid}:{ref} names frame {gfn:#x}, which "
                             f"domain {self.domain.domid} does not own")
        return gfn, bits

    def _pin(self, ref, grantee, readonly):
        """Pin entry ``ref`` for ``grantee`` (a mapping): GTF_reading/writing, pin counts.

        Returns the granted gfn. Raises GrantError with Xen's status.
        """
        gfn, bits = self._granted_frame(ref, grantee, readonly)
        act = self._active.get(ref)
        if act is None:
            act = self._active[ref] = _Active(grantee.domid, gfn)
        if bits:
            self._set_flags(ref, bits)
        if readonly:
            act.readers += 1
        else:
            act.writers += 1
        self.domain.foreign_pins[gfn] += 1
        return gfn

    def _unpin(self, ref, readonly):
        act = self._active[ref]
        if readonly:
            act.readers -= 1
        else:
            act.writers -= 1
        pins = self.domain.foreign_pins
        pins[act.gfn] -= 1
        if not pins[act.gfn]:
            del pins[act.gfn]
        clear = 0 if act.writers else abi.GTF_writing
        if not act.pinned:
            clear |= abi.GTF_reading
            del self._active[ref]
        self._set_flags(ref, clear_bits=clear)

    def pins(self, ref):
        """(readers, writers) currently pinning entry ``ref``."""
        act = self._active.get(ref)
        return (act.readers, act.writers) if act else (0, 0)

    # --- save / restore ------------------------------------------------------------

    def save(self):
        """Plain values: the table's frames, how many are in use, the pinned refs."""
        held = [m.handle for m in self._maptrack if m is not None]
        if held:
            raise MigrationError(f"domain {self.domain.domid} holds {len(held)} grant mapping(s) "
                                 f"of other domains (handles {held[:8]}); unmap them before saving")
        return {"frames": list(self._pool), "nr_frames": self.nr_frames,
                "pinned": sorted(self._active)}

    def restore(self, state):
        """Take the state ``save`` gave, into a table with no pins or mappings; checked
        in full (every frame owned by the domain) before anything changes."""
        me = self.domain
        f = StateFields(state, f"domain {me.domid} grant table")
        frames = f.uint_list("frames", 1 << 64, 1 << 16)
        if len(set(frames)) != len(frames):
            f.fail("frames", f"{frames[:16]} repeats a frame")
        for gfn in frames:
            if not me.owns(gfn):
                f.fail("frames", f"frame {gfn:#x} is not a frame domain {me.domid} owns")
        nr_frames = f.integer("nr_frames", 0, len(frames))
        pinned = f.uint_list("pinned", nr_frames * ENTRIES_PER_FRAME, 1 << 20)
        f.done()
        if self._active or any(m is not None for m in self._maptrack):
            raise MigrationError(f"domain {me.domid}: restore into a grant table that has pins "
                                 f"or mappings")
        self._pool, self.nr_frames = frames, nr_frames
        for ref in pinned:
            self._set_flags(ref, clear_bits=abi.GTF_reading | abi.GTF_writing)

    # --- the mapping side ----------------------------------------------------------

    def map_grant_ref(self, flags, ref, dom, host_addr=0):
        """GNTTABOP_map_grant_ref for this domain; returns a GrantMapping or raises GrantError."""
        me = self.domain
        if not flags & (abi.GNTMAP_device_map | abi.GNTMAP_host_map):
            raise GrantError(abi.GNTST_bad_gntref, f"map flags {flags:#x} ask for neither a host "
                                                   "nor a device mapping")
        if flags & (abi.GNTMAP_device_map | abi.GNTMAP_application_map | abi.GNTMAP_contains_pte):
            raise GrantError(abi.GNTST_general_error, f"map flags {flags:#x}: only host mappings "
                                                      "of translated guests are supported")
        granter = me.lookup(dom)
        if granter is None:
            raise GrantError(abi.GNTST_bad_domain, f"map of grant {ref}: no domain {dom}")
        if not self._free_handles:
            raise GrantError(abi.GNTST_no_space, f"domain {me.domid} has no free grant handle "
                                                 f"({len(self._maptrack)} in use)")
        readonly = bool(flags & abi.GNTMAP_readonly)
        gfn = granter.grant_table._pin(ref, me, readonly)
        if me.memory is not None:           # a guest: the VMM must place the frame in its RAM
            problem = None
            if not me.owns(host_addr >> abi.PAGE_SHIFT):
                problem = GrantError(abi.GNTST_bad_virt_addr,
                                     f"map of grant {dom}:{ref} at {host_addr:#x}: not a frame "
                                     f"of domain {me.domid}")
            elif me.on_foreign_map is None:
                problem = GrantError(abi.GNTST_general_error,
                                     f"map of grant {dom}:{ref}: the VMM cannot place foreign "
                                     f"frames in domain {me.domid}'s RAM")
            if problem is not None:
                granter.grant_table._unpin(ref, readonly)
                raise problem
        handle = self._free_handles.pop()
        mapping = GrantMapping(handle, granter, ref, gfn, readonly, host_addr)
        if me.on_foreign_map is not None:
            try:                            # the VMM may refuse (GrantError): undo the pin
                me.on_foreign_map(mapping)
            except GrantError:
                self._free_handles.append(handle)
                mapping._drop()
                granter.grant_table._unpin(ref, readonly)
                raise
        self._maptrack[handle] = self._held[handle] = mapping
        return mapping

    def unmap_grant_ref(self, handle, host_addr=0, dev_bus_addr=0):
        """GNTTABOP_unmap_grant_ref for this domain; raises GrantError on a bad handle/address."""
        mapping = self._maptrack[handle] if 0 <= handle < len(self._maptrack) else None
        if mapping is None:
            raise GrantError(abi.GNTST_bad_handle, f"domain {self.domain.domid} has no grant "
                                                   f"mapping with handle {handle}")
        if dev_bus_addr:
            raise GrantError(abi.GNTST_bad_dev_addr, f"handle {handle} has no device mapping at "
                                                     f"{dev_bus_addr:#x}")
        if host_addr != mapping.host_addr:
            raise GrantError(abi.GNTST_general_error, f"handle {handle} is mapped at "
                                                      f"{mapping.host_addr:#x}, not {host_addr:#x}")
        self._release(mapping)

    def _release(self, mapping):
        self._maptrack[mapping.handle] = None
        del self._held[mapping.handle]
        self._free_handles.append(mapping.handle)
        mapping.granter.grant_table._unpin(mapping.ref, mapping.readonly)
        if self.domain.on_foreign_unmap is not None:
            self.domain.on_foreign_unmap(mapping)
        mapping._drop()

    def drop_mappings_of(self, granter):
        """Drop every mapping this domain holds of ``granter``'s grants (the granter
        is being destroyed); the handles become invalid."""
        for mapping in self.mappings():
            if mapping.granter is granter:
                self._release(mapping)

    def unmap_all(self):
        """Drop every mapping this domain holds (domain destruction)."""
        for mapping in self.mappings():
            self._release(mapping)

    def mapping(self, handle):
        """The live GrantMapping for ``handle``, or None."""
        return self._maptrack[handle] if 0 <= handle < len(self._maptrack) else None

    def mappings(self):
        """Every live GrantMapping this domain holds, by handle."""
        held = self._held
        return [held[h] for h in sorted(held)] if held else []

    # --- copy ----------------------------------------------------------------------

    def _copy_page(self, ptr, is_gref, readonly):
        """The page view one side of a copy names (a grant or the caller's own gmfn)."""
        me = self.domain
        other = me.resolve(ptr["domid"])
        if other is None:
            raise GrantError(abi.GNTST_bad_domain, f"copy: no domain {ptr['domid']}")
        if not is_gref:
            if other is not me:
                raise GrantError(abi.GNTST_permission_denied,
                                 f"copy: domain {me.domid} may name frames by gmfn only in its "
                                 f"own memory, not domain {other.domid}'s")
            gmfn = ptr["u"]["gmfn"]
            if not me.owns(gmfn):
                raise GrantError(abi.GNTST_bad_page, f"copy: gmfn {gmfn:#x} is not a frame of "
                                                     f"domain {me.domid}")
            return me.page(gmfn)
        gfn, _ = other.grant_table._granted_frame(ptr["u"]["ref"], me, readonly)
        return other.page(gfn)

    def copy(self, op):
        """GNTTABOP_copy of one ``gnttab_copy`` (a dict as abi.gnttab_copy unpacks it).

        Xen pins each grant for the duration of the copy, setting and then clearing
        GTF_reading/GTF_writing; the copy is atomic here, so the checks are made and
        the flags end as they were.
        """
        flags = op["flags"]
        src = self._copy_page(op["source"], flags & abi.GNTCOPY_source_gref, True)
        dst = self._copy_page(op["dest"], flags & abi.GNTCOPY_dest_gref, False)
        soff, doff, length = op["source"]["offset"], op["dest"]["offset"], op["len"]
        if soff + length > PAGE_SIZE or doff + length > PAGE_SIZE:
            raise GrantError(abi.GNTST_bad_copy_arg,
                             f"copy of {length} bytes from offset {soff} to offset {doff} "
                             "crosses a page boundary")
        dst[doff:doff + length] = src[soff:soff + length]

    # --- the table as a whole ------------------------------------------------------

    def _target(self, dom, what):
        me = self.domain
        target = me.resolve(dom)
        if target is None:
            raise GrantError(abi.GNTST_bad_domain, f"{what}: no domain {dom}")
        if target is not me and not me.privileged:
            raise GrantError(abi.GNTST_permission_denied,
                             f"{what}: domain {me.domid} may not act on domain {target.domid}")
        return target

    def setup_table(self, dom, nr_frames):
        """GNTTABOP_setup_table: grow ``dom``'s table; returns its first ``nr_frames`` gfns."""
        target = self._target(dom, "setup_table")
        target.grant_table.grow(nr_frames)
        return target.grant_table.frames[:nr_frames]

    def query_size(self, dom):
        """GNTTABOP_query_size: (nr_frames, max_nr_frames) of ``dom``'s table."""
        target = self._target(dom, "query_size").grant_table
        return target.nr_frames, target.max_frames


# --- the hypercall ------------------------------------------------------------------

def _err(errno):
    return -errno


def _each_op(domain, uop, count, layout, handle_op):
    """Xen's per-op loop: read op i, run it, write it back with its OUT fields set.

    Only the OUT fields change; a bad pointer stops the loop with -EFAULT, the
    ops before it done.
    """
    access = domain.access
    size = layout.size
    for addr in range(uop, uop + count * size, size):
        try:
            raw = bytearray(access.copy_from_guest(addr, size))
            layout.pack_into(raw, 0, handle_op(layout.unpack_from(raw)))
            access.copy_to_guest(addr, raw)
        except GuestMemoryError:
            return _err(abi.EFAULT)
    return 0


def _map_one(table, op):
    try:
        mapping = table.map_grant_ref(op["flags"], op["ref"], op["dom"], op["host_addr"])
    except GrantError as exc:
        return {"status": exc.code}
    return {"status": abi.GNTST_okay, "handle": mapping.handle, "dev_bus_addr": 0}


def _unmap_one(table, op):
    try:
        table.unmap_grant_ref(op["handle"], op["host_addr"], op["dev_bus_addr"])
    except GrantError as exc:
        return {"status": exc.code}
    return {"status": abi.GNTST_okay}


def _copy_one(table, op):
    try:
        table.copy(op)
    except GrantError as exc:
        return {"status": exc.code}
    return {"status": abi.GNTST_okay}


def _setup_table(domain, uop):
    access = domain.access
    op = abi.gnttab_setup_table.unpack(access.copy_from_guest(uop, abi.gnttab_setup_table.size))
    try:
        frames = domain.grant_table.setup_table(op["dom"], op["nr_frames"])
        status = abi.GNTST_okay
        for i, gfn in enumerate(frames):
            try:
                access.copy_to_guest(op["frame_list"] + 8 * i, _U64.pack(gfn))
            except GuestMemoryError:
                status = abi.GNTST_bad_virt_addr
    except GrantError as exc:
        status = exc.code
    _write_field(domain, uop, abi.gnttab_setup_table, "status", status)
    return 0


def _query_size(domain, uop):
    layout = abi.gnttab_query_size
    op = layout.unpack(domain.access.copy_from_guest(uop, layout.size))
    try:
        nr, max_nr = domain.grant_table.query_size(op["dom"])
        out = {"nr_frames": nr, "max_nr_frames": max_nr, "status": abi.GNTST_okay}
    except GrantError as exc:
        out = {"status": exc.code}
    for name, value in out.items():
        _write_field(domain, uop, layout, name, value)
    return 0


def _set_version(domain, uop):
    layout = abi.gnttab_set_version
    op = layout.unpack(domain.access.copy_from_guest(uop, layout.size))
    rc = 0 if op["version"] == 1 else (_err(abi.ENOSYS) if op["version"] == 2 else _err(abi.EINVAL))
    _write_field(domain, uop, layout, "version", 1)
    return rc


def _get_version(domain, uop):
    layout = abi.gnttab_get_version
    op = layout.unpack(domain.access.copy_from_guest(uop, layout.size))
    target = domain.resolve(op["dom"])
    if target is None:
        return _err(abi.ESRCH)
    if target is not domain and not domain.privileged:
        return _err(abi.EPERM)
    _write_field(domain, uop, layout, "version", 1)
    return 0


def _write_field(domain, uop, layout, name, value):
    buf = bytearray(layout.size)
    layout.pack_into(buf, 0, {name: value})
    start = layout.offsetof(name)
    domain.access.copy_to_guest(uop + start, buf[start:start + layout.sizeof(name)])


_BATCHED = {
    abi.GNTTABOP_map_grant_ref: (abi.gnttab_map_grant_ref, _map_one),
    abi.GNTTABOP_unmap_grant_ref: (abi.gnttab_unmap_grant_ref, _unmap_one),
    abi.GNTTABOP_copy: (abi.gnttab_copy, _copy_one),
}
_SINGLE = {
    abi.GNTTABOP_setup_table: _setup_table,
    abi.GNTTABOP_query_size: _query_size,
}
_VERSION = {
    abi.GNTTABOP_set_version: _set_version,
    abi.GNTTABOP_get_version: _get_version,
}


def grant_table_op(domain, cmd, uop, count):
    """HYPERVISOR_grant_table_op(cmd, uop, count) from ``domain``: 0 or -errno.

    Per-op results go into the guest's op structs (status, handle ...) as Xen writes
    them; a pointer outside the domain's memory gives -EFAULT.
    """
    count &= 0xFFFF_FFFF
    if count & 0x8000_0000:
        return _err(abi.EINVAL)
    try:
        if cmd in _BATCHED:
            if count > MAX_OPS_PER_CALL:
                return _err(abi.E2BIG)
            layout, handler = _BATCHED[cmd]
            return _each_op(domain, uop, count, layout,
                            lambda op: handler(domain.grant_table, op))
        if cmd in _SINGLE:
            if count != 1:
                return _err(abi.EINVAL)
            return _SINGLE[cmd](domain, uop)
        if cmd in _VERSION:
            return _VERSION[cmd](domain, uop)
    except GuestMemoryError:
        return _err(abi.EFAULT)
    return _err(abi.ENOSYS)
