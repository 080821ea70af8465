"""A fake calling vCPU for hypercall tests: the pv.hypercall.PvVcpu protocol on plain objects.

Guest pointers go through the guest's own page tables (pagewalk.translate on the
domain's RAM) and then reach only frames the domain owns, as the VMM's EPT-style
table would: a ballooned-out frame faults. Everything the VMM would do (console,
timer, sleep, TLB flushes, CR3 loads, balloon notices) is recorded for the tests.
"""

from pyvmm.cpu.state import CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME
from pyvmm.mm.pagewalk import Paging, translate
from pyvmm.pv.domain import PhysicalAccess
from pyvmm.pv.hypercall import Hypercalls

PAGE = 4096
PTE = 0x7                     # present, writable, user
PTE_RO = 0x5


class FakeVcpu:
    def __init__(self, domain, domains, vcpu_id=0, now_ns=1_000_000):
        self.domain = domain
        self.domains = domains
        self.vcpu_id = vcpu_id
        self.cr0, self.cr3, self.cr4, self.efer = CR0_PE, 0, 0, 0     # no paging: linear = physical
        self._phys = PhysicalAccess(domain)
        self.console = bytearray()
        self.flushes, self.cr3_loads, self.timers, self.polls = [], [], [], []
        self.removed, self.added = [], []
        self.yields = self.blocks = 0
        self.now_ns = now_ns

    # --- guest memory -------------------------------------------------------------
    def paging(self):
        return Paging(self.cr0, self.cr3, self.cr4, self.efer)

    def _pages(self, va, n, write):
        out = []
        while n > 0:
            chunk = min(n, PAGE - (va & 0xFFF))
            out.append((translate(self.domain.memory, self.paging(), va, write=write), chunk))
            va += chunk
            n -= chunk
        return out

    def read_linear(self, va, n):
        return b"".join(self._phys.copy_from_guest(gpa, k) for gpa, k in self._pages(va, n, False))

    def write_linear(self, va, data):
        data = bytes(data)
        pages = self._pages(va, len(data), True)
        for gpa, k in pages:                      # check every page before writing any
            self._phys.copy_from_guest(gpa, k)
        pos = 0
        for gpa, k in pages:
            self._phys.copy_to_guest(gpa, data[pos:pos + k])
            pos += k

    # --- what the VMM does --------------------------------------------------------
    def console_write(self, data):
        self.console += data

    def flush_tlb(self, address=None):
        self.flushes.append(address)

    def load_cr3(self, value):
        self.cr3_loads.append(value)
        self.cr3 = value

    def system_time_ns(self):
        return self.now_ns

    def set_timer(self, deadline_ns):
        self.timers.append(deadline_ns)

    def yield_cpu(self):
        self.yields += 1

    def block(self):
        self.blocks += 1

    def poll(self, ports, deadline_ns):
        self.polls.append((list(ports), deadline_ns))

    def frames_removed(self, gfns):
        self.removed.append(list(gfns))

    def frames_added(self, gfns):
        self.added.append(list(gfns))

    # --- 4-level paging built from the domain's frames ------------------------------
    def long_mode(self, l4_gfn):
        self.cr0 = CR0_PE | CR0_PG
        self.cr4 = CR4_PAE
        self.efer = EFER_LME | EFER_LMA
        self.cr3 = l4_gfn * PAGE


def build_tables(domain, l4, l3, l2, l1, va, data_gfn, flags=PTE):
    """Page tables in ``domain``'s frames mapping ``va`` -> ``data_gfn`` (one path)."""
    mem = domain.memory
    for gfn in (l4, l3, l2, l1):
        mem.fill(gfn * PAGE, PAGE)
    mem.write_u64(l4 * PAGE + ((va >> 39) & 511) * 8, l3 * PAGE | PTE)
    mem.write_u64(l3 * PAGE + ((va >> 30) & 511) * 8, l2 * PAGE | PTE)
    mem.write_u64(l2 * PAGE + ((va >> 21) & 511) * 8, l1 * PAGE | PTE)
    mem.write_u64(l1 * PAGE + ((va >> 12) & 511) * 8, data_gfn * PAGE | flags)


def signed(value):
    return value - (1 << 64) if isinstance(value, int) and value >> 63 else value


def hypercall(vm, number, *args, table=None):
    """Issue hypercall ``number`` as a VMCALL does; the signed RAX (or a Shutdown)."""
    table = table or Hypercalls(0x0004_000A)
    return signed(table.call(vm, number, (tuple(args) + (0,) * 5)[:5]))
