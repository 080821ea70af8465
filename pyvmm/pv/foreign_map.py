"""Grant mappings into a guest's own guest-physical space (a guest's GNTTABOP_map_grant_ref).

Responsibility: realise ``domain.on_foreign_map`` / ``on_foreign_unmap`` for one guest
domain and its vCPU. When the guest maps another domain's grant with
GNTMAP_host_map at ``host_addr``, the granted frame must appear at that guest-physical
address: the engine places the granter's RAM page (zero-copy, its host memory) at a
page of the ``FOREIGN_WINDOW`` (``Engine.place_host_page``), and the EPT leaf of
``host_addr``'s frame is pointed there (``EptMmu.map_foreign``), R|W|X or, for a
read-only mapping, R|X. Unmap points the leaf back at the guest's own frame and removes
the window page.

The choice (Xen's HVM semantics, where guest_physmap_add_entry replaces the gfn's
p2m entry): ``host_addr`` names a frame of the mapping guest's own RAM, and the
granted frame replaces it until unmapped; the guest's own page is hidden, not lost,
and shows again after unmap. Linux allocates such frames from ballooned pages; any
ordinary frame of the guest works here. Refused with GNTST_bad_virt_addr: a frame
the guest does not own (ballooned out, beyond RAM, already holding a foreign
frame), its shared_info or grant-table frames, a frame with a PV page-table type or
mapped by a validated L1 entry (mmu_update bookkeeping). Refused with
GNTST_general_error: any MMU mode other than EPT (``--mmu shadow`` would have to
re-derive every shadow leaf that maps the frame and keep it coherent with a second
owner; ``--mmu direct`` has no second level at all).

Invariants:
- while a frame holds a foreign page, the domain does not ``owns`` it
  (``Domain.replace_frame``), so hypercall pointers by guest-physical address, grants,
  copies and the balloon cannot reach the hidden own page;
- root mode reads and writes guest-physical memory through ``PhysicalOverlay`` (the
  vCPU's ``mem`` while at least one foreign page is mapped, GuestMemory otherwise):
  the bytes it sees at such a frame are the granted page's, as the guest sees them,
  and a root-mode write into a read-only mapping is refused (GuestMemoryError), never
  made;
- a guest write to a read-only mapping never reaches the granter: it gets #GP(0), as
  Xen's HVM guests do for a write to a p2m_grant_map_ro page;
- the granter's memory stays alive while mapped: a granter being destroyed drops the
  other domains' mappings of its grants first (``Domain.destroy``).
"""

import struct

from pyvmm.cpu import events
from pyvmm.cpu.exits import ExitReason
from pyvmm.cpu.handlers import Resume, handle_ept_violation
from pyvmm.errors import GrantError, GuestMemoryError
from pyvmm.mm import ept
from pyvmm.pv import abi, pv_mmu

PAGE_SIZE = abi.PAGE_SIZE
PAGE_SHIFT = abi.PAGE_SHIFT
GP = 13
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")


class PhysicalOverlay:
    """GuestMemory as the guest sees it while some frames show granted pages:
    ``pages`` maps such a gfn to the granted page (a memoryview, read-only for a
    read-only mapping). Same methods as GuestMemory; everything else is delegated."""

    def __init__(self, memory, pages):
        self._memory = memory
        self.pages = pages

    def __getattr__(self, name):
        return getattr(self._memory, name)

    def contains(self, gpa, length=1):
        return self._memory.contains(gpa, length)

    def _pieces(self, gpa, length):
        """(gpa, length, foreign page or None, offset) chunks of a checked range."""
        if not self._memory.contains(gpa, length):
            self._memory.read(gpa, length)          # raises GuestMemoryError naming the range
        end = gpa + length
        while gpa < end:
            gfn, off = divmod(gpa, PAGE_SIZE)
            chunk = min(end - gpa, PAGE_SIZE - off)
            yield gpa, chunk, self.pages.get(gfn), off
            gpa += chunk

    def read(self, gpa, length):
        if not self.pages:
            return self._memory.read(gpa, length)
        return b"".join(bytes(page[off:off + n]) if page is not None else self._memory.read(a, n)
                        for a, n, page, off in self._pieces(gpa, length))

    def write(self, gpa, data):
        data = bytes(data)
        pieces = list(self._pieces(gpa, len(data)))
        for a, n, page, off in pieces:
            if page is not None and page.readonly:
                raise GuestMemoryError(f"guest-physical write {a:#x}+{n:#x} into frame {a >> PAGE_SHIFT:#x}, "
                                       "which shows a read-only grant mapping")
        pos = 0
        for a, n, page, off in pieces:
            if page is None:
                self._memory.write(a, data[pos:pos + n])
            else:
                page[off:off + n] = data[pos:pos + n]
            pos += n

    def fill(self, gpa, length, byte=0):
        self.write(gpa, bytes([byte]) * length)

    def read_u8(self, gpa):
        return self.read(gpa, 1)[0]

    def read_u16(self, gpa):
        return _U16.unpack(self.read(gpa, 2))[0]

    def read_u32(self, gpa):
        return _U32.unpack(self.read(gpa, 4))[0]

    def read_u64(self, gpa):
        return _U64.unpack(self.read(gpa, 8))[0]

    def write_u8(self, gpa, value):
        self.write(gpa, bytes([value & 0xFF]))

    def write_u16(self, gpa, value):
        self.write(gpa, _U16.pack(value & 0xFFFF))

    def write_u32(self, gpa, value):
        self.write(gpa, _U32.pack(value & 0xFFFF_FFFF))

    def write_u64(self, gpa, value):
        self.write(gpa, _U64.pack(value & 0xFFFF_FFFF_FFFF_FFFF))


class ForeignFrames:
    """The foreign-map hooks of ``domain`` (a guest) on ``vcpu`` (its Vcpu, whose
    ``engine``, ``mmu`` and ``mem`` this changes). ``install()`` sets the hooks."""

    def __init__(self, vcpu, domain):
        self.vcpu = vcpu
        self.domain = domain
        self.memory = vcpu.mem
        self.overlay = PhysicalOverlay(self.memory, {})
        self._slots = {}                 # gfn -> window page index
        self._free = []
        self._next = 0
        self.mapped = 0                  # counters a user can read
        self.unmapped = 0
        self.refused_writes = 0

    def install(self):
        self.domain.on_foreign_map = self.on_map
        self.domain.on_foreign_unmap = self.on_unmap
        self.vcpu.handlers[ExitReason.EPT_VIOLATION] = self.handle_ept_violation

    # --- the hooks ---------------------------------------------------------------------

    def _refuse(self, code, mapping, why):
        raise GrantError(code, f"domain {self.domain.domid}: map of grant {mapping.granter.domid}:"
                               f"{mapping.ref} at {mapping.host_addr:#x}: {why}")

    def on_map(self, mapping):
        """Show ``mapping``'s granted frame at its host_addr; GrantError if it cannot be."""
        dom, mmu = self.domain, self.vcpu.mmu
        gfn = mapping.host_addr >> PAGE_SHIFT
        if mmu is None or mmu.mode != "ept":
            mode = mmu.mode if mmu is not None else "direct"
            self._refuse(abi.GNTST_general_error, mapping,
                         f"grant mapping into a guest needs --mmu ept (this guest runs --mmu {mode})")
        if gfn == dom.shared_info_gfn or gfn in dom.grant_table.frames:
            self._refuse(abi.GNTST_bad_virt_addr, mapping, "the frame holds shared_info or a grant-table frame")
        if pv_mmu.mmu_of(dom).busy(gfn):
            self._refuse(abi.GNTST_bad_virt_addr, mapping,
                         "the frame is a PV page table or mapped by one (mmu_update)")
        if mapping.granter.memory is None:
            self._refuse(abi.GNTST_general_error, mapping, "the granter has no RAM to map")
        slot = self._free.pop() if self._free else self._next
        if slot >= ept.FOREIGN_WINDOW_PAGES:
            self._refuse(abi.GNTST_no_space, mapping, f"all {ept.FOREIGN_WINDOW_PAGES} window pages in use")
        if slot == self._next:
            self._next += 1
        hpa = ept.FOREIGN_WINDOW + slot * PAGE_SIZE
        engine = self.vcpu.engine
        engine.place_host_page(hpa, mapping.granter.memory.host_address + (mapping.gfn << PAGE_SHIFT),
                               writable=not mapping.readonly)
        dom.replace_frame(gfn)
        self._slots[gfn] = slot
        self.overlay.pages[gfn] = mapping.page
        self.vcpu.mem = self.overlay
        mmu.map_foreign(gfn, hpa, not mapping.readonly)
        self.vcpu.flush_tlb()
        self.mapped += 1

    def on_unmap(self, mapping):
        """Show the guest's own frame at ``mapping``'s host_addr again."""
        gfn = mapping.host_addr >> PAGE_SHIFT
        slot = self._slots.pop(gfn, None)
        if slot is None:
            return
        self.vcpu.mmu.unmap_foreign(gfn)
        self.overlay.pages.pop(gfn, None)
        if not self.overlay.pages:
            self.vcpu.mem = self.memory
        self.domain.restore_frame(gfn)
        engine = self.vcpu.engine
        if engine.uc is not None:                # a closed engine has nothing left to unmap
            self.vcpu.flush_tlb()
            engine.place_host_page(ept.FOREIGN_WINDOW + slot * PAGE_SIZE, None)
        self._free.append(slot)
        self.unmapped += 1

    # --- a write to a read-only mapping -------------------------------------------------

    def handle_ept_violation(self, vm, ex):
        """#GP(0) for a guest write to a frame showing a read-only grant (Xen's
        p2m_grant_map_ro answer); every other violation as the MMU decides."""
        access = ex.qualification & (ept.QUAL_READ | ept.QUAL_WRITE | ept.QUAL_FETCH)
        gfn = ex.gpa >> PAGE_SHIFT
        if access == ept.QUAL_WRITE and gfn in self._slots and gfn in vm.mmu.foreign_readonly:
            self.refused_writes += 1
            vm.inject(events.Event(GP, events.HW_EXCEPTION, 0))
            return Resume(lambda: f"write to guest-physical {ex.gpa:#x}, a read-only grant mapping: #GP(0)",
                          advance=False)
        return handle_ept_violation(vm, ex)
