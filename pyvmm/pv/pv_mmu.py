"""Paravirtual page-table updates: page types, mmu_update, update_va_mapping, mmuext_op.

Responsibility: the checks Xen makes before a PV guest's page-table entry takes
effect (xen/include/public/xen.h, "MMU UPDATE"/"MMU EXTENDED OPERATIONS"), done on
one domain's own frames, with Xen's page-type bookkeeping and its error codes;
``mmu_update``, ``update_va_mapping`` and ``mmuext_op`` are the hypercall entry points.

Address model: every domain has its own RAM, so the "machine addresses" of these
hypercalls are the domain's own guest-physical addresses, and a frame number in an
entry is one of the domain's gfns. A gfn the domain does not own (ballooned out)
or beyond its RAM can never be mapped; a gfn where it host-mapped another domain's
grant (GNTMAP_host_map at that address) counts as granted and maps writable only if
the grant mapping is writable. Another domain's RAM cannot be named at all.

Page types (Xen's idea, kept where it is what keeps a guest honest): each frame has
at most one type at a time, ``WRITABLE`` (mapped writable by a validated L1 entry,
or being written by CLEAR/COPY_PAGE) or a page-table level ``L1``..``L4``, with a
count of the references holding it. A frame gets a table type by validation: every
present entry is checked and takes its own reference (an L(n) entry on its child as
an L(n-1) table, an L1 entry on its data frame, plus the WRITABLE type if it is
writable). So a frame in use as a page table, pinned or reachable from a pinned or
loaded table, can never be mapped writable, and a writably mapped frame can never
become a page table. Pins (MMUEXT_PIN_Ln_TABLE) and each vCPU's base table
(MMUEXT_NEW_BASEPTR) hold one reference of their table's type.

Entry rules (4-level, x86-64; SDM Vol. 3A 4.5 and Xen's disallow masks written as
rules): bits 51:40 are reserved (pagewalk.MAXPHYADDR) and bits 62:52 are kept for
the hypervisor, both refused; an L1 entry may not set PWT, PCD or PAT (a domain
without I/O memory gets write-back memory, as Xen's domU); L2..L4 entries may not set
PWT, PCD, PS (no superpages, as Xen without superpage support) or G.

Invariants:
- every table with a type has a snapshot of the entries it was validated with;
  references are taken and dropped from that snapshot, never from guest memory, so
  a guest that writes a table directly (which the VMM should prevent by mapping
  ``table_frames()`` read-only) can desynchronise only its own view, never the counts;
- type counts never go below zero; a frame with a type or a mapping reference is
  ``busy`` and cannot be ballooned out (memory_op checks it);
- an operation that fails leaves the counts, pins, bases and memory as they were.

Simplifications of Xen, and why: no linear (recursive) page tables, since an entry
pointing at its own level is refused as a type clash (pyvmm guests do not need them
and it keeps validation a tree walk); validation is not preemptible (no hypercall
continuations in pyvmm); foreign page-table owners (foreigndom other than the caller)
are refused with -EPERM even for a privileged domain, because another domain's RAM is
not addressable here; MMU_MACHPHYS_UPDATE accepts only the identity entry (mfn ->
mfn), since a domain's physical-to-machine map is the identity; TLB flushes reach the
calling vCPU only (``vm.flush_tlb``): the others are flushed by the VMM when it
reschedules them; MMUEXT_SET_LDT, NEW_USER_BASEPTR and MARK/UNMARK_SUPER give -ENOSYS.
"""

import struct
import weakref

from pyvmm.errors import GuestFault, GuestMemoryError, XenOpError
from pyvmm.mm.pagewalk import MAXPHYADDR
from pyvmm.pv import abi

PAGE_SIZE = abi.PAGE_SIZE
ENTRIES = PAGE_SIZE // 8
MAX_OPS_PER_CALL = 4096           # as grant_table: more in one call is -E2BIG (no continuations)
PREEMPTED = 1 << 31               # count bit Xen sets on its own continuations

WRITABLE, L1, L2, L3, L4 = "writable", 1, 2, 3, 4

PTE_P, PTE_W, PTE_PWT, PTE_PCD, PTE_A, PTE_D, PTE_PS, PTE_G = 1, 2, 8, 16, 32, 64, 128, 256
PTE_PAT_4K = PTE_PS               # bit 7 is PAT in an L1 entry, PS above
ADDR_MASK = ((1 << MAXPHYADDR) - 1) & ~(PAGE_SIZE - 1)
RESERVED_HIGH = ((1 << 63) - 1) & ~((1 << MAXPHYADDR) - 1)     # bits 62:40
_DISALLOWED = {L1: RESERVED_HIGH | PTE_PWT | PTE_PCD | PTE_PAT_4K,
               L2: RESERVED_HIGH | PTE_PWT | PTE_PCD | PTE_PS | PTE_G}
_DISALLOWED[L3] = _DISALLOWED[L4] = _DISALLOWED[L2]

_PIN_LEVEL = {abi.MMUEXT_PIN_L1_TABLE: L1, abi.MMUEXT_PIN_L2_TABLE: L2,
              abi.MMUEXT_PIN_L3_TABLE: L3, abi.MMUEXT_PIN_L4_TABLE: L4}
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def _fail(errno, what):
    raise XenOpError(-errno, what)


def _gfn_of(entry):
    return (entry & ADDR_MASK) >> abi.PAGE_SHIFT


class _Type:
    __slots__ = ("kind", "count")

    def __init__(self, kind):
        self.kind = kind
        self.count = 1


class PvMmu:
    """The page-type state of one domain (use ``mmu_of(domain)``)."""

    def __init__(self, domain):
        self.domain = domain
        self._types = {}       # gfn -> _Type
        self._mapped = {}      # gfn -> number of validated L1 entries mapping it
        self._tables = {}      # gfn -> {index: entry} as validated (present entries only)
        self._pinned = set()
        self._bases = {}       # vcpu id -> gfn of its L4 (NEW_BASEPTR)

    # --- queries ------------------------------------------------------------------

    def type_of(self, gfn):
        """(kind, count) of frame ``gfn``, or (None, 0) without a type."""
        t = self._types.get(gfn)
        return (t.kind, t.count) if t else (None, 0)

    def is_pinned(self, gfn):
        return gfn in self._pinned

    def base(self, vcpu_id=0):
        """The gfn of ``vcpu_id``'s base table (NEW_BASEPTR), or None."""
        return self._bases.get(vcpu_id)

    def table_frames(self):
        """The gfns currently validated as page tables (what the VMM maps read-only)."""
        return sorted(g for g, t in self._types.items() if t.kind != WRITABLE)

    def busy(self, gfn):
        """True if ``gfn`` has a type or is mapped by a validated L1 entry."""
        return gfn in self._types or gfn in self._mapped

    # --- references ------------------------------------------------------------------

    def granted(self, gfn):
        """The grant mapping this domain host-mapped at frame ``gfn``, or None."""
        for mapping in self.domain.grant_table.mappings():
            if mapping.host_addr >> abi.PAGE_SHIFT == gfn:
                return mapping
        return None

    def _get_type(self, gfn, kind):
        if not self.domain.owns(gfn):
            _fail(abi.EINVAL, f"domain {self.domain.domid}: frame {gfn:#x} is not one it owns")
        t = self._types.get(gfn)
        if t is None:
            self._types[gfn] = _Type(kind)     # set first: a table that reaches itself clashes
            if kind != WRITABLE:
                try:
                    self._validate(gfn, kind)
                except XenOpError:
                    del self._types[gfn]
                    raise
            return
        if t.kind != kind:
            _fail(abi.EINVAL, f"domain {self.domain.domid}: frame {gfn:#x} is in use as "
                              f"{_kind_name(t.kind)}, not as {_kind_name(kind)}")
        t.count += 1

    def _put_type(self, gfn):
        t = self._types[gfn]
        t.count -= 1
        if t.count:
            return
        del self._types[gfn]
        if t.kind != WRITABLE:
            for entry in self._tables.pop(gfn).values():
                self._put_entry(t.kind, entry)

    def _check_entry(self, level, entry):
        bad = entry & _DISALLOWED[level]
        if bad:
            _fail(abi.EINVAL, f"domain {self.domain.domid}: L{level} entry {entry:#x} sets "
                              f"bits {bad:#x} a PV guest may not use")

    def _get_entry(self, level, entry):
        """Take the references a present entry at ``level`` needs (Xen's get_page_from_lNe)."""
        self._check_entry(level, entry)
        gfn = _gfn_of(entry)
        if level > L1:
            self._get_type(gfn, level - 1)
            return
        dom = self.domain
        if gfn >= dom.nr_gfns:
            _fail(abi.EPERM, f"domain {dom.domid}: L1 entry {entry:#x} maps frame {gfn:#x}, "
                             f"outside its RAM (0..{dom.nr_gfns - 1:#x})")
        if not dom.owns(gfn):
            _fail(abi.EBUSY, f"domain {dom.domid}: L1 entry {entry:#x} maps frame {gfn:#x}, "
                             "which it does not own")
        if entry & PTE_W:
            grant = self.granted(gfn)
            if grant is not None and grant.readonly:
                _fail(abi.EBUSY, f"domain {dom.domid}: frame {gfn:#x} holds a read-only grant "
                                 f"of domain {grant.granter.domid}; it cannot be mapped writable")
            try:
                self._get_type(gfn, WRITABLE)
            except XenOpError as exc:
                raise XenOpError(-abi.EBUSY, exc.what) from None
        self._mapped[gfn] = self._mapped.get(gfn, 0) + 1

    def _put_entry(self, level, entry):
        gfn = _gfn_of(entry)
        if level == L1:
            left = self._mapped[gfn] - 1
            if left:
                self._mapped[gfn] = left
            else:
                del self._mapped[gfn]
            if entry & PTE_W:
                self._put_type(gfn)
        else:
            self._put_type(gfn)

    def _validate(self, gfn, level):
        page = self.domain.page(gfn)
        taken = {}
        try:
            for index in range(ENTRIES):
                entry = _U64.unpack_from(page, index * 8)[0]
                if entry & PTE_P:
                    self._get_entry(level, entry)
                    taken[index] = entry
        except XenOpError as exc:
            for entry in reversed(list(taken.values())):
                self._put_entry(level, entry)
            raise XenOpError(exc.code, f"L{level} table {gfn:#x} slot {index}: {exc.what}") from None
        self._tables[gfn] = taken

    # --- operations -----------------------------------------------------------------

    def write_entry(self, ptr, value, preserve_ad=False):
        """MMU_NORMAL_PT_UPDATE (or PRESERVE_AD) of the 8 bytes at machine address ``ptr``.

        In a validated table the new entry is checked and referenced before it is
        written and the old one's references dropped after; in any other frame of the
        domain it is a plain checked store, as Xen does for a writable page.
        """
        dom = self.domain
        gfn, offset = ptr >> abi.PAGE_SHIFT, ptr & (PAGE_SIZE - 8)
        if not dom.owns(gfn) or self.granted(gfn) is not None:
            _fail(abi.EINVAL, f"domain {dom.domid}: mmu_update pointer {ptr:#x} is not in a "
                              "frame it owns")
        page = dom.page(gfn)
        if preserve_ad:
            value |= _U64.unpack_from(page, offset)[0] & (PTE_A | PTE_D)
        t = self._types.get(gfn)
        if t is None or t.kind == WRITABLE:
            _U64.pack_into(page, offset, value)
            return
        index = offset // 8
        table = self._tables[gfn]
        old = table.get(index)
        if value & PTE_P:
            self._get_entry(t.kind, value)
            table[index] = value
        else:
            table.pop(index, None)
        _U64.pack_into(page, offset, value)
        if old is not None:
            self._put_entry(t.kind, old)

    def l1_entry_address(self, paging, va):
        """The machine address of the L1 entry that maps ``va`` under ``paging`` (4-level)."""
        dom = self.domain
        if not paging.efer & (1 << 10):                       # EFER.LMA
            _fail(abi.EINVAL, f"domain {dom.domid}: update_va_mapping needs 4-level paging")
        if not -(1 << 47) <= _signed(va) < (1 << 47):
            _fail(abi.EINVAL, f"domain {dom.domid}: address {va:#x} is not canonical")
        table = (paging.cr3 & ADDR_MASK) >> abi.PAGE_SHIFT
        for shift in (39, 30, 21):
            if not dom.owns(table):
                _fail(abi.EINVAL, f"domain {dom.domid}: page-table frame {table:#x} for "
                                  f"{va:#x} is not one it owns")
            entry = _U64.unpack_from(dom.page(table), ((va >> shift) & 511) * 8)[0]
            if not entry & PTE_P or entry & PTE_PS:
                _fail(abi.EINVAL, f"domain {dom.domid}: no L1 table maps {va:#x}")
            table = _gfn_of(entry)
        t = self._types.get(table)
        if t is None or t.kind != L1:
            _fail(abi.EINVAL, f"domain {dom.domid}: frame {table:#x} mapping {va:#x} is not a "
                              "validated L1 table")
        return (table << abi.PAGE_SHIFT) | ((va >> 12) & 511) * 8

    def pin(self, gfn, level):
        if gfn in self._pinned:
            _fail(abi.EINVAL, f"domain {self.domain.domid}: frame {gfn:#x} is already pinned")
        self._get_type(gfn, level)
        self._pinned.add(gfn)

    def unpin(self, gfn):
        if not self.domain.owns(gfn) or gfn not in self._pinned:
            _fail(abi.EINVAL, f"domain {self.domain.domid}: frame {gfn:#x} is not pinned")
        self._pinned.discard(gfn)
        self._put_type(gfn)

    def new_base(self, vcpu_id, gfn):
        """MMUEXT_NEW_BASEPTR: ``gfn`` (validated as L4) becomes ``vcpu_id``'s base table."""
        self._get_type(gfn, L4)
        old = self._bases.get(vcpu_id)
        self._bases[vcpu_id] = gfn
        if old is not None:
            self._put_type(old)

    def clear_page(self, gfn):
        self._get_type(gfn, WRITABLE)
        self.domain.page(gfn)[:] = bytes(PAGE_SIZE)
        self._put_type(gfn)

    def copy_page(self, dst, src):
        if not self.domain.owns(src):
            _fail(abi.EINVAL, f"domain {self.domain.domid}: copy source {src:#x} is not a frame "
                              "it owns")
        self._get_type(dst, WRITABLE)
        self.domain.page(dst)[:] = self.domain.page(src)
        self._put_type(dst)

    def release_all(self):
        """Drop every pin and base (domain destruction); the counts end empty."""
        for gfn in sorted(self._pinned):
            self.unpin(gfn)
        for vcpu_id in list(self._bases):
            self._put_type(self._bases.pop(vcpu_id))


def _signed(va):
    va &= (1 << 64) - 1
    return va - (1 << 64) if va >> 63 else va


def _kind_name(kind):
    return "a writable page" if kind == WRITABLE else f"an L{kind} table"


_MMUS = weakref.WeakKeyDictionary()


def mmu_of(domain):
    """The PvMmu of ``domain`` (created on first use, gone with the domain)."""
    mmu = _MMUS.get(domain)
    if mmu is None:
        mmu = _MMUS[domain] = PvMmu(domain)
    return mmu


# --- the hypercalls -------------------------------------------------------------------

def _foreign_ok(domain, domid):
    """0 if ``domid`` names the caller, else Xen's -ESRCH/-EPERM."""
    if domid in (abi.DOMID_SELF, domain.domid):
        return 0
    return -abi.EPERM if domain.lookup(domid) is not None else -abi.ESRCH


def _batch_count(count):
    count &= 0xFFFF_FFFF
    if count & PREEMPTED:
        return -abi.EINVAL         # only Xen's own continuations set it, and pyvmm makes none
    if count > MAX_OPS_PER_CALL:
        return -abi.E2BIG
    return count


def _report_done(vm, pdone, done):
    """Write ``*pdone``; as Xen, a bad ``pdone`` pointer does not change the result."""
    if pdone:
        try:
            vm.write_linear(pdone, _U32.pack(done))
        except (GuestFault, GuestMemoryError):
            pass


def _run_batch(vm, owners, uops, count, pdone, layout, one):
    """Xen's batch loop: op i read, run; a failure stops at i; ``*pdone`` = ops done.

    ``owners`` are the domids the call names as frame owners; each must be the caller.
    """
    for domid in owners:
        rc = _foreign_ok(vm.domain, domid)
        if rc:
            return rc
    count = _batch_count(count)
    if count < 0:
        return count
    done, rc = 0, 0
    for addr in range(uops, uops + count * layout.size, layout.size):
        try:
            op = layout.unpack(vm.read_linear(addr, layout.size))
            one(op)
        except (GuestFault, GuestMemoryError):
            rc = -abi.EFAULT
        except XenOpError as exc:
            rc = exc.code
        if rc:
            break
        done += 1
    _report_done(vm, pdone, done)
    return rc


def mmu_update(vm, reqs, count, pdone, foreigndom):
    """HYPERVISOR_mmu_update(reqs, count, pdone, foreigndom): 0 or -errno."""
    dom = vm.domain
    pfd = (foreigndom >> 16) & 0xFFFF
    owners = (foreigndom & 0xFFFF, abi.DOMID_SELF if pfd == 0 else pfd - 1)
    mmu = mmu_of(dom)

    def one(req):
        ptr, val = req["ptr"], req["val"]
        cmd = ptr & 7
        if cmd in (abi.MMU_NORMAL_PT_UPDATE, abi.MMU_PT_UPDATE_NO_TRANSLATE,
                   abi.MMU_PT_UPDATE_PRESERVE_AD):
            mmu.write_entry(ptr & ~7, val, preserve_ad=cmd == abi.MMU_PT_UPDATE_PRESERVE_AD)
        elif cmd == abi.MMU_MACHPHYS_UPDATE:
            mfn = ptr >> abi.PAGE_SHIFT
            if not dom.owns(mfn) or val != mfn:
                _fail(abi.EINVAL, f"domain {dom.domid}: machphys entry {mfn:#x} -> {val:#x}; "
                                  "only owned frames, mapped to themselves")
        else:
            _fail(abi.ENOSYS, f"mmu_update command {cmd} does not exist")

    return _run_batch(vm, owners, reqs, count, pdone, abi.mmu_update, one)


def _flush(vm, flags, va):
    kind = flags & abi.UVMF_FLUSHTYPE_MASK
    if kind == abi.UVMF_NONE:
        return
    target = flags & ~abi.UVMF_FLUSHTYPE_MASK
    if target not in (abi.UVMF_LOCAL, abi.UVMF_ALL):
        mask = int.from_bytes(vm.read_linear(target, 8), "little")
        if not mask >> vm.vcpu_id & 1:
            return
    vm.flush_tlb(va if kind == abi.UVMF_INVLPG else None)


def update_va_mapping(vm, va, val, flags):
    """HYPERVISOR_update_va_mapping(va, val, flags): 0 or -errno."""
    mmu = mmu_of(vm.domain)
    try:
        ptr = mmu.l1_entry_address(vm.paging(), va)
        mmu.write_entry(ptr, val)
    except XenOpError as exc:
        return exc.code
    _flush(vm, flags, va)
    return 0


def mmuext_op(vm, uops, count, pdone, foreigndom):
    """HYPERVISOR_mmuext_op(uops, count, pdone, foreigndom): 0 or -errno."""
    dom = vm.domain
    mmu = mmu_of(dom)

    def one(op):
        cmd, mfn = op["cmd"], op["arg1"]["mfn"]
        if cmd in _PIN_LEVEL:
            mmu.pin(mfn, _PIN_LEVEL[cmd])
        elif cmd == abi.MMUEXT_UNPIN_TABLE:
            mmu.unpin(mfn)
        elif cmd == abi.MMUEXT_NEW_BASEPTR:
            mmu.new_base(vm.vcpu_id, mfn)
            vm.load_cr3(mfn << abi.PAGE_SHIFT)
        elif cmd in (abi.MMUEXT_TLB_FLUSH_LOCAL, abi.MMUEXT_TLB_FLUSH_ALL):
            vm.flush_tlb()
        elif cmd in (abi.MMUEXT_INVLPG_LOCAL, abi.MMUEXT_INVLPG_ALL):
            vm.flush_tlb(op["arg1"]["linear_addr"])
        elif cmd in (abi.MMUEXT_TLB_FLUSH_MULTI, abi.MMUEXT_INVLPG_MULTI):
            mask = int.from_bytes(vm.read_linear(op["arg2"]["vcpumask"], 8), "little")
            if mask >> vm.vcpu_id & 1:
                vm.flush_tlb(op["arg1"]["linear_addr"] if cmd == abi.MMUEXT_INVLPG_MULTI else None)
        elif cmd in (abi.MMUEXT_FLUSH_CACHE, abi.MMUEXT_FLUSH_CACHE_GLOBAL):
            # Guest RAM is host memory: there is no cache to write back, only the permission.
            if not dom.privileged:
                _fail(abi.EACCES, f"domain {dom.domid} may not flush caches")
        elif cmd == abi.MMUEXT_CLEAR_PAGE:
            mmu.clear_page(mfn)
        elif cmd == abi.MMUEXT_COPY_PAGE:
            mmu.copy_page(mfn, op["arg2"]["src_mfn"])
        else:
            _fail(abi.ENOSYS, f"mmuext_op command {cmd} is not provided")

    return _run_batch(vm, (foreigndom & 0xFFFF,), uops, count, pdone, abi.mmuext_op, one)
