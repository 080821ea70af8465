"""pyvmm's page walker (pyvmm/mm/pagewalk.py) agrees with the reference walker (refwalk.py).

Hypothesis builds 4-level page tables in a GuestMemory: random entries at the indices the
generated accesses use, pointing at other tables (shared subtables), at their own table
(loops, the self-map), at data pages, outside RAM, with large pages, XD and reserved bits.
Each access (read/write/fetch, user/supervisor) must translate to the same physical address
or fault with the same #PF error code and CR2 in both walkers.

pagewalk.py walks 4-level tables in C first (csrc/pagewalk.c) and in Python when the C
walk declines (a fault) or a path is recorded: the property test also checks that the C walk
answers exactly the accesses that translate, with the Python walk's address.

The reference walker is pinned first by hand-built cases, each one a rule of the SDM
(Vol. 3A, 4.5-4.7), so that the property test compares against something known good.
"""
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.errors import GuestFault
from pyvmm.mm import refwalk
from pyvmm.mm.memory import GuestMemory
from pyvmm._pagewalk import lib as c_walk
from pyvmm.mm.pagewalk import MAXPHYADDR, Paging, c_walk_flags, translate
from pyvmm.mm.refwalk import (CR0_PG, CR0_WP, CR4_PAE, CR4_SMAP, CR4_SMEP, EFER_LMA, EFER_NXE, P, PS,
                              RFLAGS_AC, RW, US, XD, Access, Cpu, Fault, walk)

RAM = 2 << 20
EFER_LME = 1 << 8
LONG = dict(cr0=CR0_PG | 1, cr4=CR4_PAE, efer=EFER_LMA | EFER_LME)


@pytest.fixture
def mem():
    m = GuestMemory(RAM)
    yield m
    m.close()


def cpu(cr3=0x1000, wp=True, nxe=True, smep=False, smap=False, ac=False, page1gb=True):
    return Cpu(cr0=LONG["cr0"] | (CR0_WP if wp else 0), cr3=cr3,
               cr4=CR4_PAE | (CR4_SMEP if smep else 0) | (CR4_SMAP if smap else 0),
               efer=LONG["efer"] | (EFER_NXE if nxe else 0), rflags=0x2 | (RFLAGS_AC if ac else 0),
               maxphyaddr=MAXPHYADDR, page1gb=page1gb)


def map_4k(mem, vaddr, paddr, leaf_flags, upper=P | RW | US):
    """PML4 at 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000 for ``vaddr``."""
    mem.write_u64(0x1000 + ((vaddr >> 39) & 511) * 8, 0x2000 | upper)
    mem.write_u64(0x2000 + ((vaddr >> 30) & 511) * 8, 0x3000 | upper)
    mem.write_u64(0x3000 + ((vaddr >> 21) & 511) * 8, 0x4000 | upper)
    mem.write_u64(0x4000 + ((vaddr >> 12) & 511) * 8, paddr | leaf_flags)


def pf(code, cr2):
    return Fault(14, code, cr2)


# ---- the reference walker, rule by rule ----------------------------------------------

def test_ref_4k_page_translates_with_offset(mem):
    map_4k(mem, 0x7F12_3456_7000, 0x10_0000, P | RW | US)
    t = walk(mem.read_u64, cpu(), 0x7F12_3456_7ABC, Access())
    assert (t.paddr, t.page_size, t.writable, t.user, t.executable) == (0x10_0ABC, 4096, True, True, True)


def test_ref_large_pages(mem):
    mem.write_u64(0x1000, 0x2000 | P | RW)
    mem.write_u64(0x2000, 0x4000_0000 | P | RW | PS)           # PDPT[0]: 1 GiB page at 1 GiB
    mem.write_u64(0x2008, 0x3000 | P | RW)
    mem.write_u64(0x3000 + 3 * 8, 0x60_0000 | P | PS)          # PD[3]: 2 MiB page at 6 MiB
    assert walk(mem.read_u64, cpu(), 0x1234_5678, Access()).paddr == 0x4000_0000 | 0x1234_5678
    t = walk(mem.read_u64, cpu(), 0x4000_0000 + 3 * (2 << 20) + 0x12345, Access())
    assert (t.paddr, t.page_size, t.writable) == (0x60_0000 + 0x12345, 2 << 20, False)
    # without 1-GiB page support, PS in a PDPTE is a reserved bit
    assert walk(mem.read_u64, cpu(page1gb=False), 0x10, Access()) == pf(0b1001, 0x10)


def test_ref_reserved_bits_per_level(mem):
    map_4k(mem, 0, 0x5000, P | RW)
    assert walk(mem.read_u64, cpu(), 0, Access(write=True)) == refwalk.Translation(0x5000, 4096, True, False, True)
    mem.write_u64(0x4000, 0x5000 | P | RW | 1 << 45)            # above MAXPHYADDR = 40
    assert walk(mem.read_u64, cpu(), 0, Access(write=True)) == pf(0b1011, 0)
    mem.write_u64(0x4000, 0x5000 | P | XD)                      # XD with EFER.NXE = 0
    assert walk(mem.read_u64, cpu(nxe=False), 0, Access()) == pf(0b1001, 0)
    assert walk(mem.read_u64, cpu(nxe=True), 0, Access()).executable is False
    mem.write_u64(0x1000, 0x2000 | P | RW | PS)                 # PS in a PML4E
    assert walk(mem.read_u64, cpu(), 0, Access()) == pf(0b1001, 0)
    mem.write_u64(0x1000, 0x2000 | P | RW)
    mem.write_u64(0x3000, 0x20_0000 | P | PS | 1 << 13)       # 2 MiB page, bit 13 set
    assert walk(mem.read_u64, cpu(), 0, Access()) == pf(0b1001, 0)
    mem.write_u64(0x2000, 0x4000_0000 | P | PS | 1 << 29)      # 1 GiB page, bit 29 set
    assert walk(mem.read_u64, cpu(), 0, Access()) == pf(0b1001, 0)


def test_ref_not_present_wins_over_reserved_bits_and_is_found_first(mem):
    map_4k(mem, 0, 0x5000, P | RW)
    mem.write_u64(0x4000, 0xFFFF_FFFF_FFFF_FFFE)                # not present: the rest is ignored
    assert walk(mem.read_u64, cpu(), 0, Access(write=True, user=True)) == pf(0b110, 0)


def test_ref_table_outside_ram_reads_all_ones(mem):
    mem.write_u64(0x1000, RAM | P | RW)                         # PDPT just past the end of RAM
    assert walk(mem.read_u64, cpu(), 0x40, Access()) == pf(0b1001, 0x40)


def test_ref_self_map_reads_its_own_entries(mem):
    map_4k(mem, 0, 0x5000, P | RW)
    mem.write_u64(0x1000 + 511 * 8, 0x1000 | P | RW)            # PML4[511] -> the PML4 itself
    # indices 511, 0, 0, 0: the loop once, then PML4[0] -> PDPT[0] -> PD[0] used as the page
    recursive_pt = 0xFFFF_FF80_0000_0000
    t = walk(mem.read_u64, cpu(), recursive_pt, Access())
    assert t.paddr == 0x4000                                    # the page table of va 0
    t = walk(mem.read_u64, cpu(), 0xFFFF_FFFF_FFFF_F000, Access())   # 511 x 4: the PML4 itself
    assert t.paddr == 0x1000


def test_ref_write_protect_and_user(mem):
    map_4k(mem, 0, 0x5000, P | US)                              # read-only user page
    assert walk(mem.read_u64, cpu(wp=False), 0, Access(write=True)).paddr == 0x5000
    assert walk(mem.read_u64, cpu(wp=True), 0, Access(write=True)) == pf(0b011, 0)
    assert walk(mem.read_u64, cpu(wp=False), 0, Access(write=True, user=True)) == pf(0b111, 0)
    map_4k(mem, 0, 0x5000, P | RW)                              # supervisor page
    assert walk(mem.read_u64, cpu(), 0, Access(user=True)) == pf(0b101, 0)
    map_4k(mem, 0, 0x5000, P | RW | US, upper=P | RW)           # U/S = 0 in an upper level
    assert walk(mem.read_u64, cpu(), 0, Access(user=True)) == pf(0b101, 0)


def test_ref_nx_smep_smap(mem):
    map_4k(mem, 0, 0x5000, P | RW | US | XD)
    assert walk(mem.read_u64, cpu(nxe=True), 0, Access(fetch=True)) == pf(0b10001, 0)
    map_4k(mem, 0, 0x5000, P | RW | US)
    assert walk(mem.read_u64, cpu(smep=True), 0, Access(fetch=True)) == pf(0b10001, 0)
    assert walk(mem.read_u64, cpu(smep=True), 0, Access(fetch=True, user=True)).paddr == 0x5000
    assert walk(mem.read_u64, cpu(smap=True), 0, Access()) == pf(0b1, 0)
    assert walk(mem.read_u64, cpu(smap=True, ac=True), 0, Access()).paddr == 0x5000
    assert walk(mem.read_u64, cpu(smap=True, ac=True), 0, Access(implicit=True)) == pf(0b1, 0)
    # I/D is only reported with NXE or SMEP (SDM 4.7)
    map_4k(mem, 0, 0x5000, P | RW)
    assert walk(mem.read_u64, cpu(nxe=False), 0, Access(fetch=True, user=True)) == pf(0b101, 0)


def test_ref_non_canonical_is_gp(mem):
    assert walk(mem.read_u64, cpu(), 0x0000_8000_0000_0000, Access()) == Fault(13, 0)
    with pytest.raises(ValueError, match="4-level paging only"):
        walk(mem.read_u64, Cpu(cr0=CR0_PG, cr3=0, cr4=0, efer=0), 0, Access())


# ---- pagewalk.py against the reference ---------------------------------------------------

TABLES = [0x1000 * i for i in range(1, 7)]         # six table pages; CR3 is one of them
INDICES = st.one_of(st.sampled_from([0, 1, 511]), st.integers(0, 511))
OUTSIDE_RAM = [RAM, RAM + 0x1000, 0x8000_0000, 0xFF_FFFF_F000, 1 << MAXPHYADDR, 0x000F_FFFF_FFFF_F000]
RESERVED_CANDIDATES = [13, 14, 20, 21, 29, 30, MAXPHYADDR, 45, 51, 52, 58, 62, 63]

targets = st.one_of(
    st.sampled_from(TABLES),                                  # shared subtables, loops
    st.integers(0, RAM // 4096 - 1).map(lambda f: f * 4096),  # data pages anywhere in RAM
    st.integers(0, 1).map(lambda i: (i + 1) << 21),           # 2 MiB aligned
    st.sampled_from(OUTSIDE_RAM),
)
entries = st.builds(
    lambda target, low, extra: target | low | extra,
    targets,
    st.integers(0, 0x1FF),                                    # P RW US PWT PCD A D PS G
    st.lists(st.sampled_from(RESERVED_CANDIDATES), max_size=2).map(lambda bits: sum({1 << b for b in bits})),
)


@st.composite
def vaddrs(draw):
    i4, i3, i2, i1 = (draw(INDICES) for _ in range(4))
    va = i4 << 39 | i3 << 30 | i2 << 21 | i1 << 12 | draw(st.integers(0, 4095))
    return va | (0xFFFF_0000_0000_0000 if va >> 47 else 0)  # canonical


@st.composite
def scenarios(draw):
    accesses = draw(st.lists(st.tuples(vaddrs(), st.booleans(), st.booleans(), st.booleans()),
                             min_size=1, max_size=6))
    used = sorted({(va >> s) & 511 for va, *_ in accesses for s in (39, 30, 21, 12)})
    tables = {t: {i: draw(entries) for i in used if draw(st.integers(0, 9))} for t in TABLES}
    regs = dict(cr3=draw(st.sampled_from(TABLES)), wp=draw(st.booleans()), nxe=draw(st.booleans()))
    return tables, regs, accesses


def pagewalk_result(mem, c, va, write, user, fetch):
    try:
        return translate(mem, Paging(c.cr0, c.cr3, c.cr4, c.efer), va, write=write, user=user, fetch=fetch)
    except GuestFault as f:
        return Fault(f.vector, f.error_code, f.cr2)


def reference_result(mem, c, va, write, user, fetch):
    r = walk(mem.read_u64, c, va, Access(write=write, user=user, fetch=fetch))
    return r.paddr if isinstance(r, refwalk.Translation) else r


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenarios())
def test_pagewalk_agrees_with_reference(mem, scenario):
    tables, regs, accesses = scenario
    mem.fill(0, 8 * 4096)
    for table, slots in tables.items():
        for index, value in slots.items():
            mem.write_u64(table + index * 8, value)
    c = cpu(**regs)
    for va, write, user, fetch in accesses:
        if fetch and write:
            continue                                           # no such access
        assert pagewalk_result(mem, c, va, write, user, fetch) == reference_result(mem, c, va, write, user, fetch), \
            f"va={va:#x} write={write} user={user} fetch={fetch} cpu={c}"
        python_only = translate(mem, Paging(c.cr0, c.cr3, c.cr4, c.efer), va, write=write, user=user,
                                fetch=fetch, path=[]) if not isinstance(reference_result(
                                    mem, c, va, write, user, fetch), Fault) else None
        assert c_walk_result(mem, c, va, write, user, fetch) == python_only, f"C walk, va={va:#x}"


def c_walk_result(mem, c, va, write, user, fetch):
    """The C walk's address, or None where it leaves the walk to Python."""
    flags = c_walk_flags(Paging(c.cr0, c.cr3, c.cr4, c.efer), write, user, fetch)
    gpa = c_walk.pw_translate64(mem.host_address, mem.size, c.cr3, va, flags)
    return None if gpa == c_walk.PW_FALLBACK else gpa


def test_c_walk_answers_a_plain_4k_walk_and_declines_a_fault(mem):
    map_4k(mem, 0x7F12_3456_7000, 0x10_0000, P | RW | US)
    assert c_walk_result(mem, cpu(), 0x7F12_3456_7ABC, False, True, False) == 0x10_0ABC
    map_4k(mem, 0x7F12_3456_7000, 0x10_0000, P | US)               # read-only: a write faults
    assert c_walk_result(mem, cpu(), 0x7F12_3456_7ABC, True, False, False) is None
    with pytest.raises(GuestFault) as fault:                     # and Python makes the #PF
        translate(mem, Paging(LONG["cr0"] | CR0_WP, 0x1000, CR4_PAE, LONG["efer"]), 0x7F12_3456_7ABC, write=True)
    assert (fault.value.error_code, fault.value.cr2) == (0b011, 0x7F12_3456_7ABC)
