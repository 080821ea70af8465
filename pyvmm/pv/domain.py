"""Domains as plain Python objects: identity, frames, grant table, event channels.

Responsibility: a ``Domain`` is one guest (or the Python-side domain 0 whose
backends are Python code): its domid, its RAM (a GuestMemory, or none for a
Python domain), which guest frames (gfns) it owns, where its shared_info page is,
its grant table and its event-channel table. A ``DomainTable`` maps domids to
domains and resolves DOMID_SELF, as Xen's ``rcu_lock_domain_by_any_id`` does.

Invariants:
- a domain reads and writes guest memory only in frames it owns; ``page(gfn)``
  refuses any other frame, so no grant, copy or hypercall argument can reach
  another domain's RAM except through a grant that domain made;
- a frame mapped or pinned by another domain (``foreign_pins``) cannot be released
  (ballooned out) until every such mapping is gone;
- a frame of the domain's RAM replaced by a granted frame of another domain
  (``replace_frame``, a guest's GNTTABOP_map_grant_ref, pv/foreign_map.py) stays the
  domain's page but is not ``owns``-ed until ``restore_frame``: no hypercall, grant,
  copy or balloon operation reaches the hidden own frame meanwhile;
- when a domain is destroyed, the mappings other domains hold of its grants are
  dropped first (their frames show their own RAM again), so no domain keeps a
  mapping of memory that is about to be freed;
- shared_info is always 4 KiB: a private buffer until the guest places it in one of
  its own frames (``place_shared_info``), whose content it then keeps;
- domids below DOMID_FIRST_RESERVED, unique in a table.

Upcalls: when an event becomes pending for a vCPU, the event-channel code calls
``domain.on_upcall(vcpu_id)`` (set by the VMM, which injects the interrupt when
``vcpu_info.evtchn_upcall_mask`` allows, through the IDT vector the guest registered
in ``upcall_vector``); a domain without a callback only gets the bits in shared_info. A foreign mapping into a guest's RAM is realised by the VMM
through ``domain.on_foreign_map(mapping)``/``on_foreign_unmap(mapping)``.
"""

from collections import Counter

from pyvmm.errors import ConfigError, FrameError, GuestMemoryError
from pyvmm.pv import abi
from pyvmm.pv.event_channel import EventChannels
from pyvmm.pv.grant_table import GrantTable

PAGE_SIZE = abi.PAGE_SIZE
PAGE_SHIFT = abi.PAGE_SHIFT


class PhysicalAccess:
    """Guest pointers read as guest-physical addresses in the domain's own frames.

    The accessor a hypercall uses to reach its argument structs: a pointer that
    leaves the domain's RAM or touches a frame it does not own raises
    GuestMemoryError (the hypercall returns -EFAULT). The VMM may install an
    accessor that walks the guest's page tables instead (same two methods).
    """

    def __init__(self, domain):
        self.domain = domain

    def _views(self, addr, length):
        if addr < 0 or length < 0:
            raise GuestMemoryError(f"domain {self.domain.domid}: bad guest pointer {addr:#x}+{length:#x}")
        end = addr + length
        while addr < end:
            gfn, off = divmod(addr, PAGE_SIZE)
            chunk = min(end - addr, PAGE_SIZE - off)
            if not self.domain.owns(gfn):
                raise GuestMemoryError(
                    f"domain {self.domain.domid}: guest pointer {addr:#x} is in frame {gfn:#x}, "
                    "which the domain does not own")
            yield self.domain.memory.view[addr:addr + chunk]
            addr += chunk

    def copy_from_guest(self, addr, length):
        return b"".join(bytes(v) for v in self._views(addr, length))

    def copy_to_guest(self, addr, data):
        data = memoryview(bytes(data))
        views = list(self._views(addr, len(data)))  # check the whole range before writing
        pos = 0
        for view in views:
            view[:] = data[pos:pos + len(view)]
            pos += len(view)


class Domain:
    """One domain. ``memory`` is its GuestMemory, or None for a Python-side domain."""

    def __init__(self, domid, memory=None, name=None, *, nr_vcpus=1, privileged=False,
                 grant_frames=(), max_maptrack=1024, max_evtchn_ports=1024):
        if not 0 <= domid < abi.DOMID_FIRST_RESERVED:
            raise ConfigError(f"domid {domid} is outside 0..{abi.DOMID_FIRST_RESERVED - 1}")
        if not 1 <= nr_vcpus <= abi.XEN_LEGACY_MAX_VCPUS:
            raise ConfigError(f"domain {domid}: {nr_vcpus} vCPUs; the 2-level event ABI "
                              f"serves 1..{abi.XEN_LEGACY_MAX_VCPUS}")
        self.domid = domid
        self.name = name or f"d{domid}"
        self.memory = memory
        self.nr_vcpus = nr_vcpus
        self.privileged = privileged
        self.nr_gfns = memory.size >> PAGE_SHIFT if memory is not None else 0
        self._owned = bytearray(b"\1" * self.nr_gfns)
        self.foreign_pins = Counter()
        self.domains = None
        self.access = PhysicalAccess(self)
        self.on_upcall = None
        self.on_foreign_map = None
        self.on_foreign_unmap = None
        # HVMOP_set_param(HVM_PARAM_CALLBACK_IRQ) of type VECTOR: the IDT vector the VMM
        # delivers upcalls through (None: the guest only sees the bits in shared_info).
        self.upcall_vector = None
        self._private_shared_info = bytearray(PAGE_SIZE)
        self.shared_info_gfn = None
        self.grant_table = GrantTable(self, grant_frames, max_maptrack)
        self.evtchn = EventChannels(self, max_evtchn_ports)

    def __repr__(self):
        return f"Domain({self.domid}, {self.name!r})"

    # --- frames ---------------------------------------------------------------------

    def owns(self, gfn):
        """True if ``gfn`` is a frame of this domain's RAM that it currently owns."""
        return 0 <= gfn < self.nr_gfns and self._owned[gfn] == 1

    @property
    def nr_pages(self):
        return self.nr_gfns - self._owned.count(0)

    def replace_frame(self, gfn):
        """Frame ``gfn`` now shows another domain's granted frame (until restore_frame)."""
        if not self.owns(gfn):
            raise FrameError(self.domid, gfn, "cannot hold a foreign frame: not a frame the domain owns")
        self._owned[gfn] = 2

    def restore_frame(self, gfn):
        """Frame ``gfn`` shows the domain's own page again."""
        if not 0 <= gfn < self.nr_gfns or self._owned[gfn] != 2:
            raise FrameError(self.domid, gfn, "holds no foreign frame")
        self._owned[gfn] = 1

    def page(self, gfn):
        """The 4 KiB of frame ``gfn`` as a writable memoryview; FrameError if not owned."""
        if not self.owns(gfn):
            raise FrameError(self.domid, gfn, "not a frame this domain owns")
        start = gfn << PAGE_SHIFT
        return self.memory.view[start:start + PAGE_SIZE]

    def release(self, gfn):
        """Give frame ``gfn`` back (balloon out, XENMEM_decrease_reservation)."""
        if not self.owns(gfn):
            raise FrameError(self.domid, gfn, "cannot release a frame the domain does not own")
        if self.foreign_pins[gfn]:
            raise FrameError(self.domid, gfn, f"still mapped by another domain "
                                              f"({self.foreign_pins[gfn]} mapping(s))")
        if gfn == self.shared_info_gfn or gfn in self.grant_table.frames:
            raise FrameError(self.domid, gfn, "holds the shared_info page or a grant-table frame")
        self._owned[gfn] = 0

    def populate(self, gfn):
        """Take frame ``gfn`` back (balloon in, XENMEM_populate_physmap): it reads as zeros."""
        if not 0 <= gfn < self.nr_gfns:
            raise FrameError(self.domid, gfn, f"outside the domain's RAM (0..{self.nr_gfns - 1:#x})")
        if self._owned[gfn]:
            raise FrameError(self.domid, gfn, "is already populated")
        self._owned[gfn] = 1
        self.page(gfn)[:] = bytes(PAGE_SIZE)

    # --- shared_info ----------------------------------------------------------------

    def shared_info(self):
        """shared_info_t's 4 KiB as a writable memoryview (guest frame or private buffer)."""
        if self.shared_info_gfn is None:
            return memoryview(self._private_shared_info)
        return self.page(self.shared_info_gfn)

    def place_shared_info(self, gfn):
        """Put shared_info at frame ``gfn`` (XENMAPSPACE_shared_info); its content moves along."""
        content = bytes(self.shared_info())
        target = self.page(gfn)
        target[:] = content
        self.shared_info_gfn = gfn

    # --- other domains -------------------------------------------------------------

    def lookup(self, domid):
        """Domain ``domid`` (no DOMID_SELF), as Xen's rcu_lock_domain_by_id; None if unknown."""
        if self.domains is None:
            return self if domid == self.domid else None
        return self.domains.get(domid)

    def resolve(self, domid):
        """Domain ``domid`` or DOMID_SELF, as Xen's rcu_lock_domain_by_any_id; None if unknown."""
        if self.domains is None:
            return self if domid in (abi.DOMID_SELF, self.domid) else None
        return self.domains.resolve(self, domid)

    # --- life cycle -----------------------------------------------------------------

    def destroy(self):
        """Close every event channel, drop the mappings other domains hold of this
        domain's grants, and every grant mapping this domain holds."""
        self.evtchn.close_all()
        for other in self.domains if self.domains is not None else ():
            if other is not self:
                other.grant_table.drop_mappings_of(self)
        self.grant_table.unmap_all()


class DomainTable:
    """domid -> Domain, with DOMID_SELF resolution."""

    def __init__(self):
        self._domains = {}

    def add(self, domain):
        if domain.domid in self._domains:
            raise ConfigError(f"domid {domain.domid} is already in use by {self._domains[domain.domid].name}")
        if domain.domains is not None:
            raise ConfigError(f"domain {domain.domid} already belongs to a domain table")
        self._domains[domain.domid] = domain
        domain.domains = self
        return domain

    def get(self, domid):
        """The domain with this id, or None (DOMID_SELF is not an id here)."""
        return self._domains.get(domid)

    def resolve(self, caller, domid):
        """``domid`` as the caller means it: DOMID_SELF is the caller; None if unknown."""
        if domid == abi.DOMID_SELF:
            return caller
        return self._domains.get(domid)

    def remove(self, domid):
        """Destroy domain ``domid`` and drop it from the table."""
        domain = self._domains.get(domid)
        if domain is None:
            raise ConfigError(f"no domain {domid} to remove")
        domain.destroy()
        del self._domains[domid]
        domain.domains = None

    def __iter__(self):
        return iter(list(self._domains.values()))

    def __len__(self):
        return len(self._domains)
