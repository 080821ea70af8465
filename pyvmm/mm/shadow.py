"""Shadow page tables: the VMM's own guest-linear -> host-physical tables, kept
coherent with the guest's.

Responsibility: build, on demand, the translations the CPU engine really uses
from the guest's 4-level page tables; keep them coherent when the guest changes
its tables; emulate the accessed/dirty bits the CPU would set in the guest's
entries; virtualize CR3 (the guest loads and reads its own value, the engine runs
on the shadow root); and keep a dirty log. This is how VMMs ran guests before
EPT/NPT (VMware's binary translator, Xen's and KVM's shadow MMUs).

How it works:
- The engine runs the guest without a second-level table, on a shadow root in
  VMM-private memory (the pool). A shadow page mirrors one guest table reached
  by one path from the root (``ShadowPage.gfn``); a guest large page is split
  into 4 KiB shadow leaves (a shadow page with ``gfn`` None). Shadow pages are
  not shared between paths, so a leaf can carry the permissions of its whole
  path (non-leaf shadow entries allow everything).
- A #PF exit (every guest #PF is intercepted) is resolved by walking the guest's
  tables for the faulting address (mm/pagewalk.py). If the guest's tables say
  the access faults, the fault is the guest's own: it is reflected with the
  guest's error code. Otherwise the VMM sets the accessed bits on the path (and
  the dirty bit for a write), fills the shadow path, and the instruction runs
  again.
- Coherence: every guest frame a shadow page mirrors is write-protected in all
  shadow leaves (``rmap_pt``: frame -> shadow pages derived from it; ``rmap_w``:
  frame -> writable shadow leaves that map it). A guest write to such a frame
  faults; the VMM drops ("zaps") every shadow page derived from it and lets the
  write through: the frame stays writable until a later fill reads through it
  again, which write-protects it anew. When the faulting write's own translation
  runs through the frame it writes (a self-map), the write is single-stepped
  (TF, the #DB is intercepted) and the frame zapped again after it.
- Accessed/dirty bits: a leaf is writable in the shadow only once the guest's
  dirty bit is set (a read fill of a clean page maps it read-only, so the first
  write faults and sets D), and, while dirty logging runs, only after a write
  fault, which marks the log.
- Roots are cached per guest CR3 frame (up to ``max_roots``), so switching back
  to an address space costs no refill: the write protection keeps cached roots
  coherent. A change of paging mode (CR0.WP, CR4.PSE/PAE/PGE/SMEP/SMAP, EFER.NXE)
  zaps everything; so does running out of pool pages.

Invariants:
- a shadow leaf maps only guest RAM, or what stands for memory beyond RAM as a
  PC behaves there (reads see all ones through a read-only page; a write is
  single-stepped into a scratch page whose leaf is dropped right after), never
  other VMM memory;
- a guest frame with a shadow page derived from it has no writable shadow leaf,
  except the one leaf of a write being single-stepped;
- a writable shadow leaf means the guest's dirty bit is set in its leaf entry;
- methods that drop or downgrade shadow entries return ``flush=True``: the caller
  must flush the engine's TLB. Adding permissions never needs a flush.

Limits (checked, with a clear error): 4-level paging only (the guest must keep
CR0.PG and EFER.LMA), and CR0.WP=1 (with WP=0 the CPU would let supervisor
writes through the write protection).
"""

import struct
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional

from pyvmm.cpu.state import CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, CR4_SMEP, EFER_LMA, EFER_NXE
from pyvmm.cpu.msr import EFER
from pyvmm.errors import GuestFault, PyvmmError
from pyvmm.mm.pagewalk import ADDR_MASK_4K, PFEC_I, PFEC_RSVD, PFEC_U, PFEC_W, PTE_NX, PTE_P, PTE_U, \
    PTE_W, translate

PAGE = 0x1000
PTE_PWT, PTE_PCD, PTE_A, PTE_D = 0x8, 0x10, 0x20, 0x40
_TABLE_ENTRY = PTE_P | PTE_W | PTE_U | PTE_A      # non-leaf shadow entries allow everything
_SHIFT = {4: 39, 3: 30, 2: 21, 1: 12}
_Q = struct.Struct("<Q")
CR4_SMAP = 1 << 21
CR4_PGE = 1 << 7
# Control-register bits that change how the guest's tables are read (SDM Vol. 3A, 4.1).
CR0_PAGING_BITS = CR0_PG | CR0_WP
CR4_PAGING_BITS = CR4_PSE | CR4_PAE | CR4_PGE | CR4_SMEP | CR4_SMAP


class ShadowPoolExhausted(PyvmmError):
    """The shadow tables need more pages than the pool holds."""


class ShadowUnsupported(PyvmmError):
    """A guest paging mode the shadow MMU does not implement."""


class ShadowPage:
    """One shadow table page: ``level`` 4 (PML4) .. 1 (PT) at host-physical ``hpa``,
    mirroring guest table frame ``gfn`` (None: a split guest large page)."""
    __slots__ = ("hpa", "level", "gfn", "parent", "index", "children", "leaves")

    def __init__(self, hpa, level, gfn, parent, index):
        self.hpa, self.level, self.gfn, self.parent, self.index = hpa, level, gfn, parent, index
        self.children = {}          # index -> ShadowPage (levels 4..2)
        self.leaves = {}            # index -> (gfn, writable) (level 1)


@dataclass
class FaultOutcome:
    """What a #PF exit comes to: ``kind`` is "filled" (run the instruction again),
    "reflect" (``fault`` is the guest's own #PF), "step" (filled; single-step the
    instruction, then call ``step_done``) or "stop" (``note`` says why)."""
    kind: str
    note: str
    fault: Optional[GuestFault] = None
    flush: bool = False


class ShadowMmu:
    mode = "shadow"

    def __init__(self, pool, pool_base, ram_size, max_roots=32):
        if pool_base % PAGE or len(pool) % PAGE or len(pool) < 8 * PAGE:
            raise ValueError("the shadow pool must be page aligned and hold at least 8 pages")
        self._pool = memoryview(pool).cast("B")
        self.pool_base = pool_base
        self.ram_size = ram_size
        self.max_roots = max_roots
        self._pool[:PAGE] = b"\xff" * PAGE
        self.ones_hpa = pool_base                  # what memory beyond RAM reads as
        self.sink_hpa = pool_base + PAGE           # where writes beyond RAM go (then dropped)
        self._free = []
        self._next = 2
        self.roots = OrderedDict()                 # guest PML4 frame -> root ShadowPage
        self.rmap_pt = {}                          # guest frame -> {ShadowPage derived from it}
        self.rmap_w = {}                           # guest frame -> {(leaf ShadowPage, index)} writable
        self.guest_cr3 = 0
        self.root = None
        self.dirty_log = None
        self._step = set()                         # guest frames written by a single-stepped write
        self._step_leaves = set()                  # linear pages to unmap after the step
        self._last_pt_write = None                 # (rip, frame) of the last page-table write
        self.step_guest_tf = None                  # during a step: had the guest set TF itself?
        self.stats = dict(fills=0, reflected=0, pt_writes=0, steps=0, zaps=0, resets=0, invlpg=0,
                          roots_created=0, pool_resets=0)

    # ---- pool pages ----
    def _alloc(self, level, gfn, parent, index):
        if self._free:
            off = self._free.pop()
        elif (self._next + 1) * PAGE <= len(self._pool):
            off = self._next * PAGE
            self._next += 1
        else:
            raise ShadowPoolExhausted(f"shadow pool of {len(self._pool) // PAGE} pages is full")
        self._pool[off:off + PAGE] = bytes(PAGE)
        return ShadowPage(self.pool_base + off, level, gfn, parent, index)

    def _set(self, page, index, value):
        _Q.pack_into(self._pool, page.hpa - self.pool_base + index * 8, value)

    def _get(self, page, index):
        return _Q.unpack_from(self._pool, page.hpa - self.pool_base + index * 8)[0]

    @property
    def pages_in_use(self):
        return self._next - 2 - len(self._free)

    # ---- CR3 ----
    def load_cr3(self, cr3):
        """The guest loads ``cr3``: returns the value the engine's CR3 must hold."""
        gfn = (cr3 & ADDR_MASK_4K) >> 12
        root = self.roots.get(gfn)
        if root is None:
            while len(self.roots) >= self.max_roots:
                _, old = self.roots.popitem(last=False)
                self._free_page(old)
            root = self._new_root(gfn)
        else:
            self.roots.move_to_end(gfn)
        self.guest_cr3 = cr3
        self.root = root
        return root.hpa | (cr3 & (PTE_PWT | PTE_PCD))

    def _new_root(self, gfn):
        try:
            root = self._alloc(4, gfn, None, None)
        except ShadowPoolExhausted:
            self._zap_all()
            root = self._alloc(4, gfn, None, None)
        self.roots[gfn] = root
        self.stats["roots_created"] += 1
        return root

    # ---- guest page faults ----
    def on_page_fault(self, paging, gva, error_code, mem, rip=None):
        """Resolve an intercepted #PF at guest-linear ``gva`` with the engine's error
        code; ``paging`` holds the guest's own CR0/CR3/CR4/EFER, ``rip`` the faulting
        instruction's address."""
        try:
            self.check_paging(paging.cr0, paging.cr4, paging.efer)
        except ShadowUnsupported as e:
            return FaultOutcome("stop", str(e))
        if error_code & PFEC_RSVD:
            return FaultOutcome("stop", f"reserved bit in a shadow entry for {gva:#x} (a VMM bug)")
        write, user, fetch = bool(error_code & PFEC_W), bool(error_code & PFEC_U), bool(error_code & PFEC_I)
        path = []
        try:
            gpa = translate(mem, paging, gva, write=write, user=user, fetch=fetch, path=path)
        except GuestFault as fault:
            self.stats["reflected"] += 1
            return FaultOutcome("reflect", f"the guest's tables fault too at {gva:#x}: #PF reflected "
                                           f"(error code {fault.error_code:#x})", fault=fault)
        gfn = gpa >> 12
        if gpa >= self.ram_size and write:
            # A PC drops writes to where no memory is: the write goes to a scratch page,
            # single-stepped, and the leaf is dropped after it (reads keep seeing ones).
            try:
                self._fill_or_reset(gva, gpa, path, write, True, mem)
            except ShadowPoolExhausted as e:
                return FaultOutcome("stop", str(e))
            self._step_leaves.add(gva)
            self.stats["steps"] += 1
            return FaultOutcome("step", f"write to {gva:#x} -> {gpa:#x} beyond RAM: dropped (single-stepped "
                                        "into a scratch page)", flush=True)
        flush = False
        step = False
        if write and self.rmap_pt.get(gfn):
            # a write to a page table the shadow mirrors: drop what was derived from it
            self.stats["pt_writes"] += 1
            self._zap_frame(gfn)
            flush = True
            step = self._needs_step(gfn, path, rip, paging, mem)
            if step:
                self._step.add(gfn)     # before the fill, which must not protect it again
        try:
            flush |= self._fill_or_reset(gva, gpa, path, write, step, mem)
        except ShadowPoolExhausted as e:
            return FaultOutcome("stop", str(e))
        self.stats["fills"] += 1
        kind = "write" if write else "fetch" if fetch else "read"
        if step:
            self.stats["steps"] += 1
            return FaultOutcome("step", f"{kind} of {gva:#x} writes page table {gpa:#x} through itself: "
                                        "single-stepped", flush=True)
        if gpa >= self.ram_size:
            return FaultOutcome("filled", f"read of {gva:#x} -> {gpa:#x} beyond RAM: all-ones page mapped",
                                flush=flush)
        return FaultOutcome("filled", f"shadow fill: {kind} of {gva:#x} -> guest-physical {gpa:#x}", flush=flush)

    def _needs_step(self, gfn, path, rip, paging, mem):
        """Would letting the write through unprotected loop? It does when the
        instruction's own translations (the write's, the code fetch's) run through the
        page table it writes: refilling them write-protects the table again before the
        write can complete. Other operands are caught by the same write faulting twice
        in a row at one RIP."""
        if any(addr >> 12 == gfn for addr, _ in path):
            return True
        repeat = self._last_pt_write == (rip, gfn)
        self._last_pt_write = (rip, gfn)
        if repeat or rip is None:
            return repeat
        code_path = []
        try:
            translate(mem, paging, rip, fetch=True, path=code_path)
        except GuestFault:
            pass
        return any(addr >> 12 == gfn for addr, _ in code_path)

    def step_done(self):
        """The single-stepped write completed: the table it wrote is zapped again.
        Returns True if a step was pending (else the #DB is the guest's own)."""
        frames, self._step = self._step, set()
        leaves, self._step_leaves = self._step_leaves, set()
        for gfn in frames:
            self._zap_frame(gfn)
        for gva in leaves:
            self._drop_gva(gva)
        return bool(frames or leaves)

    @property
    def stepping(self):
        return bool(self._step or self._step_leaves)

    def _fill_or_reset(self, gva, gpa, path, write, force_writable, mem):
        """``_fill``; when the pool is full, drop every shadow and fill again (flush).
        ShadowPoolExhausted only if one path does not fit in an empty pool."""
        try:
            return self._fill(gva, gpa, path, write, force_writable, mem)
        except ShadowPoolExhausted:
            self._zap_all()
            self.stats["pool_resets"] += 1
            self._fill(gva, gpa, path, write, force_writable, mem)
            return True

    def _fill(self, gva, gpa, path, write, force_writable, mem):
        """Set A/D in the guest's entries and build the shadow path for ``gva``."""
        log = self.dirty_log
        for addr, entry in path:
            if not entry & PTE_A:
                mem.write_u64(addr, entry | PTE_A)
                if log is not None:             # the CPU's A/D writes are guest writes too
                    log.mark(addr)
        leaf_addr, leaf = path[-1]
        leaf = mem.read_u64(leaf_addr)
        if write and not leaf & PTE_D:
            leaf |= PTE_D
            mem.write_u64(leaf_addr, leaf)
            if log is not None:
                log.mark(leaf_addr)
        flush = False
        page = self.root
        flush |= self._sync(page)
        entries = [e for _, e in path]
        for level in (4, 3, 2):
            index = (gva >> _SHIFT[level]) & 511
            child = page.children.get(index)
            if child is None:
                depth = 4 - level
                if depth + 1 < len(entries):           # the guest entry points to a table
                    child_gfn = (entries[depth] & ADDR_MASK_4K) >> 12
                else:                                  # a guest large page: split it
                    child_gfn = None
                child = self._alloc(level - 1, child_gfn, page, index)
                page.children[index] = child
                self._set(page, index, child.hpa | _TABLE_ENTRY)
            flush |= self._sync(child)
            page = child
        allow_w = all(e & PTE_W for e in entries)
        allow_u = all(e & PTE_U for e in entries)
        no_x = any(e & PTE_NX for e in entries)
        gfn = gpa >> 12
        beyond = gpa >= self.ram_size
        writable = force_writable or (allow_w and not beyond and bool(leaf & PTE_D) and not self.rmap_pt.get(gfn)
                                      and (write or self.dirty_log is None))
        hpa = (self.sink_hpa if write else self.ones_hpa) if beyond else gpa & ~(PAGE - 1)
        value = hpa | PTE_P | PTE_A | PTE_D | (leaf & (PTE_PWT | PTE_PCD))
        value |= (PTE_W if writable else 0) | (PTE_U if allow_u else 0)
        if no_x:
            value |= PTE_NX
        index = (gva >> 12) & 511
        self._drop_leaf(page, index)
        self._set(page, index, value)
        if not beyond:
            page.leaves[index] = (gfn, writable)
            if writable:
                self.rmap_w.setdefault(gfn, set()).add((page, index))
                if self.dirty_log is not None:
                    self.dirty_log.mark(gpa)
        return flush

    def _sync(self, page):
        """Make ``page`` derived from its guest frame again: write-protect that frame."""
        gfn = page.gfn
        if gfn is None:
            return False
        pages = self.rmap_pt.setdefault(gfn, set())
        if page in pages:
            return False
        pages.add(page)
        if gfn in self._step:           # written by the instruction being stepped: after it
            return False
        return self._write_protect(gfn)

    def _write_protect(self, gfn):
        leaves = self.rmap_w.pop(gfn, None)
        if not leaves:
            return False
        for page, index in leaves:
            self._set(page, index, self._get(page, index) & ~PTE_W)
            page.leaves[index] = (gfn, False)
        return True

    def _drop_leaf(self, page, index):
        old = page.leaves.pop(index, None)
        if old is not None and old[1]:
            ws = self.rmap_w.get(old[0])
            if ws is not None:
                ws.discard((page, index))
                if not ws:
                    del self.rmap_w[old[0]]

    # ---- dropping shadow pages ----
    def _zap_frame(self, gfn):
        for page in list(self.rmap_pt.pop(gfn, ())):
            self._zap(page)

    def _zap(self, page):
        """Empty ``page`` (it stays linked, its children go) and un-derive it."""
        self.stats["zaps"] += 1
        for child in page.children.values():
            self._free_page(child)
        for index in list(page.leaves):
            self._drop_leaf(page, index)
        page.children.clear()
        off = page.hpa - self.pool_base
        self._pool[off:off + PAGE] = bytes(PAGE)
        if page.gfn is not None:
            pages = self.rmap_pt.get(page.gfn)
            if pages is not None:
                pages.discard(page)
                if not pages:
                    del self.rmap_pt[page.gfn]

    def _free_page(self, page):
        self._zap(page)
        self._free.append(page.hpa - self.pool_base)

    def _zap_all(self):
        for root in self.roots.values():
            self._zap(root)

    def reset(self, why):
        """The paging mode changed: every shadow translation is dropped. Returns
        True (flush)."""
        self.stats["resets"] += 1
        self._zap_all()
        return True

    def check_paging(self, cr0, cr4, efer):
        """Raise ShadowUnsupported for a paging mode this MMU cannot shadow."""
        if not cr0 & CR0_PG or not efer & EFER_LMA:
            raise ShadowUnsupported("shadow paging needs 4-level paging: the guest turned paging off "
                                    f"(CR0 {cr0:#x}, EFER {efer:#x}); run it with --mmu ept")
        if not cr0 & CR0_WP:
            raise ShadowUnsupported(f"shadow paging needs CR0.WP=1 (CR0 {cr0:#x}): with WP=0 supervisor "
                                    "writes would bypass the write protection of page tables; run it with --mmu ept")

    def invlpg(self, gva):
        """INVLPG: drop the shadow leaf for ``gva`` in the current address space.
        Returns True if an entry was dropped (flush that address)."""
        self.stats["invlpg"] += 1
        return self._drop_gva(gva)

    def _drop_gva(self, gva):
        page = self.root
        for level in (4, 3, 2):
            page = page.children.get((gva >> _SHIFT[level]) & 511) if page is not None else None
        if page is None:
            return False
        index = (gva >> 12) & 511
        if not self._get(page, index) & PTE_P:
            return False
        self._drop_leaf(page, index)
        self._set(page, index, 0)
        return True

    # ---- dirty log ----
    def start_dirty_log(self, log):
        """Log writes into ``log`` (a DirtyLog). Returns True: flush the TLB."""
        self.dirty_log = log
        for gfn in list(self.rmap_w):
            self._write_protect(gfn)
        return True

    def read_dirty_log(self):
        """(bitmap, flush_needed): the pages written since the last read; re-armed.
        Only pages written since the last read can have writable leaves."""
        bitmap = self.dirty_log.read_and_clear()
        flush = False
        for gfn in list(self.rmap_w):
            flush |= self._write_protect(gfn)
        return bitmap, flush

    def stop_dirty_log(self):
        self.dirty_log = None


class ShadowedCpu:
    """The CPU as the guest sees it under shadow paging: CR3 is the guest's own
    value (the engine runs on the shadow root), and changes of paging mode drop
    the shadow tables. Everything else is the engine's (delegated)."""

    def __init__(self, engine, mmu):
        self._engine = engine
        self._mmu = mmu

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def system_registers(self):
        cr0, cr2, _, cr4, efer, hflags = self._engine.system_registers()
        return cr0, cr2, self._mmu.guest_cr3, cr4, efer, hflags

    def get_cr(self, n):
        return self._mmu.guest_cr3 if n == 3 else self._engine.get_cr(n)

    def set_cr(self, n, value):
        engine = self._engine
        if n == 3:
            engine.set_cr(3, self._mmu.load_cr3(value))     # the engine flushes its TLB
            return
        old = engine.get_cr(n)
        if n in (0, 4):
            cr0 = value if n == 0 else engine.get_cr(0)
            self._mmu.check_paging(cr0, engine.get_cr(4), engine.efer)
        engine.set_cr(n, value)
        mask = CR0_PAGING_BITS if n == 0 else CR4_PAGING_BITS if n == 4 else 0
        if (old ^ value) & mask:
            self._mmu.reset(f"CR{n} {old:#x} -> {value:#x}")

    def set_msr(self, index, value):
        engine = self._engine
        old = engine.efer if index == EFER else None
        engine.set_msr(index, value)
        if old is not None and (old ^ engine.efer) & EFER_NXE:
            self._mmu.reset("EFER.NXE changed")
            engine.flush_tlb()
