"""The EPT-style table: the VMM's own guest-physical -> host-physical map with R/W/X.

Responsibility: own a 4-level table that says, for every guest-physical page, which
host-physical page backs it and whether the guest may read, write or execute it;
answer lookups; and say what an access that broke those permissions was (the EPT
violation qualification). It is walked by the CPU engine after the guest's own page
tables ("two-dimensional" walk), so the guest changes its tables and CR3 freely.

Format. pyvmm's engine implements the second-level walk with AMD's nested paging
(NPT), whose entries have the long-mode page-table format (AMD64 APM Vol. 2,
15.25.5 "Nested Table Walk"): P (bit 0) is "readable", R/W (bit 1) "writable", NX
(bit 63) "not executable", U/S (bit 2) must be set (nested walks are user
accesses), PS (bit 7) marks a 2 MiB leaf in a PD. Intel's EPT keeps R/W/X in bits
0-2 instead; the permissions this module exposes are EPT's (R=1, W=2, X=4), and
``entry_perms``/``_leaf`` translate. A/D bits are preset in every entry so the
CPU never writes to the table.

Invariants:
- a permission set with W or X but not R is an EPT misconfiguration (SDM Vol. 3C,
  28.3.3.1) and is refused when asked for (``EptMisconfig``), never written;
- every mapped guest page of RAM maps host page ``gpa + offset``: pyvmm's root mode
  reads guest memory by guest-physical address, so the table may remove or restrict
  RAM pages but never moves them (``offset`` is fixed per table). Only pages beyond
  RAM may map one of the VMM's own pages (``map_host``): they have no memory a root
  mode access could mean. The one exception is a RAM page replaced by another
  domain's granted frame (``map_foreign``, placed by the engine in the
  ``FOREIGN_WINDOW``): it maps that window page until ``unmap_foreign``, permission
  changes keep it there, and root mode must reach it through the mapping, not by
  guest-physical address (pv/foreign_map.py sees to both);
- the table lives in ``pool`` (a writable buffer the engine sees at host-physical
  ``pool_base``); table pages are allocated from it and given back only by
  ``drop_host_maps`` (the tables ``map_host`` made) or ``reset``;
- changing a mapping to fewer permissions needs a TLB flush by the caller
  (``map``/``protect``/``unmap`` return True when one is needed); adding
  permissions never does: the CPU re-walks when its cached entry says no.
"""

import struct

from pyvmm.errors import PyvmmError
from pyvmm.mm.layout import VMM_PRIVATE_BASE

R, W, X = 1, 2, 4
RWX = R | W | X
PAGE = 0x1000
LARGE = 0x20_0000
_P, _RW, _US, _PS, _A, _D = 1, 2, 4, 0x80, 0x20, 0x40
_NX = 1 << 63
_ADDR = 0x000F_FFFF_FFFF_F000
_TABLE = _P | _RW | _US | _A          # non-leaf entries allow everything; leaves decide
_Q = struct.Struct("<Q")
HOST_MAP_PAGES = 64     # pool pages for the VMM pages and tables of accesses beyond RAM
MAX_GPA = 1 << 48       # guest-physical addresses the 4-level table can map
# Host-physical pages where the engine places other domains' granted frames
# (Engine.place_host_page): VMM-private, 4 GiB above its base, clear of the EPT pool
# (at most ~7 MiB for 3 GiB of RAM) and below the CPU's 40-bit physical limit.
FOREIGN_WINDOW = VMM_PRIVATE_BASE + (4 << 30)
FOREIGN_WINDOW_PAGES = 1 << 16
assert FOREIGN_WINDOW + FOREIGN_WINDOW_PAGES * PAGE <= 1 << 40

# EPT-violation exit qualification (SDM Vol. 3C, Table 28-7)
QUAL_READ, QUAL_WRITE, QUAL_FETCH = 1, 2, 4
QUAL_READABLE, QUAL_WRITABLE, QUAL_EXECUTABLE = 8, 16, 32
QUAL_GLA_VALID, QUAL_GLA_TRANSLATED = 1 << 7, 1 << 8

# AMD #NPF EXITINFO1 (APM Vol. 2, 15.25.6 "Nested versus Guest Page Faults")
NPF_PRESENT, NPF_WRITE, NPF_USER, NPF_RSVD, NPF_FETCH = 1, 2, 4, 8, 16
NPF_FINAL = 1 << 32          # fault on the final guest-physical address
NPF_WALK = 1 << 33           # fault while reading the guest's own page tables


class EptMisconfig(PyvmmError):
    """A mapping the EPT format cannot express (write or execute without read)."""


class EptPoolExhausted(PyvmmError):
    """The table needs more pages than its pool holds."""


def perms_name(perms):
    return "".join(c if perms & bit else "-" for c, bit in (("r", R), ("w", W), ("x", X)))


def _leaf(hpa, perms, large):
    if perms & ~RWX:
        raise EptMisconfig(f"permission bits {perms:#x} are not a subset of R|W|X")
    if perms and not perms & R:
        raise EptMisconfig(f"EPT permissions {perms_name(perms)} grant write or execute without read")
    if not perms:
        return 0
    entry = hpa | _P | _US | _A | _D | (_RW if perms & W else 0) | (0 if perms & X else _NX)
    return entry | _PS if large else entry


def entry_perms(entry):
    """R/W/X of a leaf entry (0 for a not-present one)."""
    if not entry & _P:
        return 0
    return R | (W if entry & _RW else 0) | (0 if entry & _NX else X)


class EptTable:
    """A 4-level guest-physical -> host-physical table in ``pool``.

    ``pool`` is a writable buffer (mmap or bytearray) whose first byte the engine sees
    at host-physical ``pool_base``; ``offset`` is added to every guest-physical address
    to get its host-physical one (0: identity)."""

    def __init__(self, pool, pool_base, offset=0):
        if pool_base % PAGE or len(pool) % PAGE or len(pool) < 4 * PAGE:
            raise ValueError("the EPT pool must be page aligned and hold at least 4 pages")
        self._pool = memoryview(pool).cast("B")
        self.pool_base = pool_base
        self.offset = offset
        self.reset()

    @staticmethod
    def pool_pages_for(ram_size):
        """Pages a table needs to map ``ram_size`` bytes from 0 entirely with 4 KiB
        leaves, plus HOST_MAP_PAGES for the pages beyond RAM (``map_host``)."""
        gib = -(-ram_size // (1 << 30))
        return 2 + gib + -(-ram_size // LARGE) + 1 + HOST_MAP_PAGES

    def reset(self):
        """Forget every mapping (the whole table unmapped)."""
        self._pool[:PAGE] = bytes(PAGE)
        self._next = 1
        self._free = []
        self._host_pages = {}                      # name -> host-physical page (vmm_page)
        self._host_leaves = []                     # leaf slots map_host wrote
        self._host_tables = []                     # (parent slot, table page) map_host allocated
        self._foreign = {}                         # RAM gpa -> window hpa (map_foreign)
        self.root = self.pool_base                 # host-physical address of the PML4
        self.splits = 0

    # ---- table pages ----
    def _alloc(self):
        if self._free:
            hpa = self._free.pop()
        elif (self._next + 1) * PAGE > len(self._pool):
            raise EptPoolExhausted(f"EPT pool of {len(self._pool) // PAGE} pages is full")
        else:
            hpa = self.pool_base + self._next * PAGE
            self._next += 1
        off = hpa - self.pool_base
        self._pool[off:off + PAGE] = bytes(PAGE)
        return hpa

    def vmm_page(self, name, fill=0):
        """Host-physical address of a page of the VMM's own, taken from the pool once
        (until ``reset``) and filled with the byte ``fill``: what pages beyond RAM map."""
        hpa = self._host_pages.get(name)
        if hpa is None:
            hpa = self._alloc()
            off = hpa - self.pool_base
            self._pool[off:off + PAGE] = bytes([fill]) * PAGE
            self._host_pages[name] = hpa
        return hpa

    def map_host(self, gpa, hpa, perms):
        """Map the 4 KiB page at ``gpa`` (beyond RAM) to the VMM's page ``hpa``. The
        table pages this needs are remembered and given back by ``drop_host_maps``.
        The caller flushes the TLB (the page's target may have changed)."""
        if gpa % PAGE or hpa % PAGE or not 0 <= gpa < 1 << 48:
            raise ValueError(f"EPT page {gpa:#x} -> {hpa:#x} is not page aligned or beyond 48 bits")
        leaf = _leaf(hpa, perms, False)
        pde_slot = self._descend(gpa, True, self._host_tables)
        pde = self._get(pde_slot)
        if pde & _PS:
            self._split(pde_slot)
            pde = self._get(pde_slot)
        elif not pde & _P:
            pde = self._new_table(pde_slot, self._host_tables)
        slot = self._slot(pde & _ADDR, gpa, 12)
        if not self._get(slot) & _P:
            self._host_leaves.append(slot)
        self._set(slot, leaf)

    def map_foreign(self, gpa, hpa, perms):
        """Point the RAM page at ``gpa`` to the window page ``hpa`` (another domain's
        frame) with ``perms``, until ``unmap_foreign``; a 2 MiB leaf around it is split.
        Always returns True: the page's target changed (flush the TLB)."""
        if gpa % PAGE or hpa % PAGE or not FOREIGN_WINDOW <= hpa < FOREIGN_WINDOW + FOREIGN_WINDOW_PAGES * PAGE:
            raise ValueError(f"foreign page {gpa:#x} -> {hpa:#x}: not page aligned or not in the window")
        _leaf(hpa, perms, False)
        self._foreign[gpa] = hpa
        self._apply(gpa, PAGE, lambda old: perms, False, only_mapped=False)
        return True

    def unmap_foreign(self, gpa, perms):
        """Give the RAM page at ``gpa`` back its own frame with ``perms``. Returns True
        (flush the TLB)."""
        if self._foreign.pop(gpa, None) is None:
            raise ValueError(f"guest-physical page {gpa:#x} holds no foreign frame")
        self._apply(gpa, PAGE, lambda old: perms, False, only_mapped=False)
        return True

    @property
    def foreign_pages(self):
        """{RAM gpa: window hpa} of the pages that map another domain's frame."""
        return dict(self._foreign)

    def drop_host_maps(self):
        """Unmap every page ``map_host`` mapped and give back the table pages it
        allocated (they hold nothing else: RAM's tables all exist before). The caller
        flushes the TLB."""
        for slot in self._host_leaves:
            self._set(slot, 0)
        for slot, page in reversed(self._host_tables):
            self._set(slot, 0)
            self._free.append(page)
        self._host_leaves, self._host_tables = [], []

    def _get(self, hpa_slot):
        return _Q.unpack_from(self._pool, hpa_slot - self.pool_base)[0]

    def _set(self, hpa_slot, value):
        _Q.pack_into(self._pool, hpa_slot - self.pool_base, value)

    def _slot(self, table, gpa, shift):
        return table + ((gpa >> shift) & 511) * 8

    def _descend(self, gpa, create, allocated=None):
        """Slot of the PD entry covering ``gpa`` (creating PDPT/PD on the way; each
        table created is appended to ``allocated`` as (parent slot, page) if given)."""
        table = self.root
        for shift in (39, 30):
            slot = self._slot(table, gpa, shift)
            entry = self._get(slot)
            if not entry & _P:
                if not create:
                    return None
                entry = self._new_table(slot, allocated)
            table = entry & _ADDR
        return self._slot(table, gpa, 21)

    def _new_table(self, slot, allocated=None):
        entry = self._alloc() | _TABLE
        self._set(slot, entry)
        if allocated is not None:
            allocated.append((slot, entry & _ADDR))
        return entry

    def _split(self, pde_slot):
        """Turn the 2 MiB leaf at ``pde_slot`` into a table of 512 equal 4 KiB leaves."""
        pde = self._get(pde_slot)
        pt = self._alloc()
        base, perms = pde & _ADDR & ~(LARGE - 1), entry_perms(pde)
        off = pt - self.pool_base
        for i in range(512):
            _Q.pack_into(self._pool, off + i * 8, _leaf(base + i * PAGE, perms, False))
        self._set(pde_slot, pt | _TABLE)
        self.splits += 1

    # ---- mappings ----
    def map(self, gpa, size, perms, large=True):
        """Map [gpa, gpa+size) with ``perms``; 2 MiB leaves where aligned if ``large``.
        Returns True if permissions were taken away (a TLB flush is needed)."""
        _leaf(0, perms, False)          # refuse a misconfiguration before touching anything
        return self._apply(gpa, size, lambda old: perms, large, only_mapped=False)

    def protect(self, gpa, size, perms):
        """Set ``perms`` on the mapped pages of [gpa, gpa+size); unmapped pages stay so."""
        _leaf(0, perms, False)
        return self._apply(gpa, size, lambda old: perms, False, only_mapped=True)

    def change(self, gpa, size, add=0, remove=0):
        """Add and remove permission bits on each mapped page of the range, keeping
        each page's other bits (e.g. take W away for dirty logging, keep X as it was)."""
        _leaf(0, R | add, False)
        if remove & R and (remove & (W | X) != W | X or add):
            raise EptMisconfig("taking read away but leaving write or execute would be a misconfiguration")
        return self._apply(gpa, size, lambda old: (old | add) & ~remove, False, only_mapped=True)

    def unmap(self, gpa, size):
        return self._apply(gpa, size, lambda old: 0, True, only_mapped=False)

    def _apply(self, gpa, size, new_perms, large, only_mapped):
        """Set each leaf of the range to ``new_perms(old_perms)``. 2 MiB leaves are kept
        (or made, if ``large``) where the range covers them whole and the new value
        does not depend on per-page state; otherwise they are split."""
        if gpa % PAGE or size % PAGE or size <= 0:
            raise ValueError(f"EPT range {gpa:#x}+{size:#x} is not page aligned")
        if gpa + size > 1 << 48:
            raise ValueError(f"EPT range {gpa:#x}+{size:#x} is beyond 48 bits")
        lost = False
        end = gpa + size
        while gpa < end:
            pde_slot = self._descend(gpa, create=not only_mapped)
            if pde_slot is None:
                gpa = (gpa | (1 << 30) - 1) + 1
                continue
            pde = self._get(pde_slot)
            whole = gpa % LARGE == 0 and end - gpa >= LARGE
            if whole and not pde & _P and only_mapped:
                gpa += LARGE
                continue
            if whole and (pde & _PS or not pde & _P and large):
                lost |= self._rewrite(pde_slot, pde, gpa, new_perms, True)
                gpa += LARGE
                continue
            if pde & _PS:
                self._split(pde_slot)
                pde = self._get(pde_slot)
            elif not pde & _P:
                if only_mapped:
                    gpa = (gpa | LARGE - 1) + 1
                    continue
                pde = self._new_table(pde_slot)
            pt = pde & _ADDR
            stop = min(end, (gpa | LARGE - 1) + 1)
            while gpa < stop:
                slot = self._slot(pt, gpa, 12)
                entry = self._get(slot)
                if entry & _P or not only_mapped:
                    lost |= self._rewrite(slot, entry, gpa, new_perms, False)
                gpa += PAGE
        return lost

    def _rewrite(self, slot, entry, gpa, new_perms, large):
        """Write the leaf for ``gpa`` with ``new_perms(old perms)``; True if any were lost."""
        old = entry_perms(entry)
        new = new_perms(old)
        hpa = gpa + self.offset if large else self._foreign.get(gpa, gpa + self.offset)
        self._set(slot, _leaf(hpa, new, large))
        return bool(old & ~new)

    def lookup(self, gpa):
        """(host-physical address, perms, page size) for ``gpa``, or None if unmapped."""
        pde_slot = self._descend(gpa, create=False)
        if pde_slot is None:
            return None
        pde = self._get(pde_slot)
        if not pde & _P:
            return None
        if pde & _PS:
            return (pde & _ADDR & ~(LARGE - 1)) | (gpa & (LARGE - 1)), entry_perms(pde), LARGE
        pte = self._get(self._slot(pde & _ADDR, gpa, 12))
        if not pte & _P:
            return None
        return (pte & _ADDR) | (gpa & (PAGE - 1)), entry_perms(pte), PAGE

    def perms(self, gpa):
        found = self.lookup(gpa)
        return found[1] if found else 0

    @property
    def pages_used(self):
        return self._next - len(self._free)


def qualification(access, found_perms):
    """The EPT-violation exit qualification for an access (QUAL_READ/WRITE/FETCH) to a
    page whose entry grants ``found_perms``. The guest-linear address is not reported
    (bit 7 clear): AMD's nested page fault, which the engine implements, does not
    give it."""
    q = access & (QUAL_READ | QUAL_WRITE | QUAL_FETCH)
    q |= (QUAL_READABLE if found_perms & R else 0) | (QUAL_WRITABLE if found_perms & W else 0)
    q |= QUAL_EXECUTABLE if found_perms & X else 0
    return q


def access_of_npf(exit_info1):
    """QUAL_READ/WRITE/FETCH and final-translation flag from an AMD #NPF EXITINFO1."""
    if exit_info1 & NPF_FETCH:
        access = QUAL_FETCH
    elif exit_info1 & NPF_WRITE:
        access = QUAL_WRITE
    else:
        access = QUAL_READ
    return access, not exit_info1 & NPF_WALK


class EptMmu:
    """The EPT-style MMU of one VM: its table over guest RAM (all of it R/W/X) and the
    policy for the violations the VMM itself causes.

    - Dirty logging: ``start_dirty_log`` takes W from every page; a write exits once
      per page, marks the log and gives W back. ``read_dirty_log`` returns the bitmap,
      clears it and write-protects again.
    - Beyond RAM the guest sees what a PC's open bus gives: the page is mapped, read
      and execute, to one VMM page of all ones (so a page table there has every
      reserved bit set and the CPU's own walk gives #PF with RSVD, and data reads
      as ~0); a write there is single-stepped (``stepping``; the caller sets TF and
      calls ``step_done`` at the #DB) into a scratch page, which drops it. When the
      pool pages kept for this run out, every such mapping is dropped and made
      again on demand.
    - Anything else (a RAM page not mapped, a write to a page the VMM made read-only
      for its own reasons) is not handled here: ``on_violation`` returns None and
      the exit handler decides (stop the VM with the reason).

    Not offered: execute tracking (RAM non-executable until first fetched), which
    would keep Unicorn's stores to data pages off its slow path. QEMU 5.0's nested
    walk (get_hphys) dereferences a NULL pointer when a guest page-table read meets
    a non-executable nested entry, so it crashes the engine (measured).
    """

    mode = "ept"

    def __init__(self, table, ram_size):
        self.table = table
        self.ram_size = ram_size
        self.dirty_log = None
        self.logged_writes = 0
        self.beyond_ram = dict(mapped=0, writes_dropped=0, recycled=0)
        self._step_pages = []                       # pages beyond RAM mapped to the scratch page
        self.step_guest_tf = None                   # during a step: had the guest set TF itself?
        self.foreign_readonly = set()               # gfns showing a read-only granted frame
        table.map(0, ram_size, RWX)

    @property
    def nested_root(self):
        return self.table.root

    def on_violation(self, gpa, access, perms):
        """Resolve a violation the VMM caused on purpose. ``access`` is
        QUAL_READ/WRITE/FETCH, ``perms`` what the table granted there (from the
        qualification; 0: not mapped). Returns a note (str) if the guest can go on,
        or None."""
        page = gpa & ~(PAGE - 1)
        if gpa >= self.ram_size:
            return self._beyond_ram(page, access, perms)
        if not perms or page >> 12 in self.foreign_readonly:
            return None                              # (a read-only grant never becomes writable)
        if access == QUAL_WRITE and not perms & W and self.dirty_log is not None:
            self.dirty_log.mark(page)
            self.table.change(page, PAGE, add=W)
            self.logged_writes += 1
            return f"first write to page {page:#x} since the dirty log was read: logged, write granted"
        return None
    def _beyond_ram(self, page, access, perms):
        if page >= MAX_GPA:
            return None
        if not perms:
            self._map_host(page, "open bus", R | X)
            self.beyond_ram["mapped"] += 1
            return (f"no memory at guest-physical {page:#x} (beyond RAM): mapped to a page of all ones, "
                    "what a PC's open bus reads")
        if access == QUAL_WRITE and not perms & W:
            self._map_host(page, "scratch", RWX)
            self._step_pages.append(page)
            self.beyond_ram["writes_dropped"] += 1
            return f"write to guest-physical {page:#x} beyond RAM: single-stepped into a scratch page, dropped"
        return None

    def _map_host(self, page, name, perms):
        try:
            self.table.map_host(page, self.table.vmm_page(name, 0xFF), perms)
        except EptPoolExhausted:
            # Every page beyond RAM the guest touched holds its tables: give them all
            # back (the ones in use come again on demand) and map this one.
            self.table.drop_host_maps()
            self.beyond_ram["recycled"] += 1
            self.table.map_host(page, self.table.vmm_page(name, 0xFF), perms)

    @property
    def stepping(self):
        return bool(self._step_pages)

    def map_foreign(self, gfn, hpa, writable):
        """Frame ``gfn`` of RAM shows the window page ``hpa`` (a granted frame), R|X or
        R|W|X. Returns True: flush the TLB."""
        if writable:
            self.foreign_readonly.discard(gfn)
        else:
            self.foreign_readonly.add(gfn)
        return self.table.map_foreign(gfn * PAGE, hpa, RWX if writable else R | X)

    def unmap_foreign(self, gfn):
        """Frame ``gfn`` shows its own RAM again, write-protected if the dirty log runs
        (so the next write is logged). Returns True: flush the TLB."""
        perms = R | X if self.dirty_log is not None else RWX
        self.foreign_readonly.discard(gfn)
        return self.table.unmap_foreign(gfn * PAGE, perms)

    def step_done(self):
        """The single-stepped write beyond RAM completed: its page reads all ones
        again. True if a step was pending (else the #DB is the guest's own); the
        caller flushes the TLB."""
        pages, self._step_pages = self._step_pages, []
        for page in pages:
            self._map_host(page, "open bus", R | X)
        return bool(pages)

    def start_dirty_log(self, log):
        """Track writes into ``log`` (a DirtyLog). Returns True: the TLB must be flushed."""
        self.dirty_log = log
        return self.table.change(0, self.ram_size, remove=W)

    def read_dirty_log(self):
        """(bitmap, flush_needed): the pages written since the last read; tracking re-armed."""
        bitmap = self.dirty_log.read_and_clear()
        return bitmap, self.table.change(0, self.ram_size, remove=W)

    def stop_dirty_log(self):
        self.dirty_log = None
        self.table.change(0, self.ram_size, add=W)
