"""Grant mappings between guests (pv/foreign_map.py): a guest maps another guest's grant
into its own guest-physical space under EPT; refused clearly under shadow paging."""

from pathlib import Path

import pytest

from pyvmm.errors import FrameError, GrantError, GuestMemoryError
from pyvmm.mm.ept import FOREIGN_WINDOW, RWX, R, W, X, EptMmu, EptTable
from pyvmm.mm.dirty_log import DirtyLog
from pyvmm.pv import abi
from pyvmm.pv.foreign_map import PhysicalOverlay
from pyvmm.pv.hypervisor import Hypervisor, parse_domain_spec

from .pvworld import DATA_GFN, world

BUILD = Path(__file__).resolve().parents[2] / "guests" / "build"
HOST, RO = abi.GNTMAP_host_map, abi.GNTMAP_host_map | abi.GNTMAP_readonly
MiB = 1 << 20


def run_pair(mmu, refused=False):
    extra = " expect_refused=1" if refused else ""
    specs = [parse_domain_spec(str(BUILD / "pvgrantmap.elf"), name=n) for n in ("a", "b")]
    specs[0].cmdline, specs[1].cmdline = "role=1 peer=2" + extra, "role=2 peer=1" + extra
    out = []
    host = Hypervisor(specs, mmu=mmu, console=out.append)
    results = host.run()
    return host, results, b"".join(out).decode().splitlines()


def test_a_guest_maps_reads_writes_and_unmaps_another_guests_grant_under_ept():
    host, results, lines = run_pair("ept")
    failed = [line for line in lines if "FAIL" in line]
    assert not failed, "\n".join(lines)
    assert [r.status for r in results.values()] == [0, 0], results
    assert "b: pvgrantmap mapper: 15/15 checks passed" in lines
    assert "a: pvgrantmap granter: 8/8 checks passed" in lines
    # console_io from the mapped page: root mode read the granted frame, not B's own
    assert "b: pvgrantmap: the mapped page says: hello from the granter" in lines
    for name in ("b: ok write_to_readonly_mapping_gets_gp", "b: ok own_page_back",
                 "a: ok revoke_refused_while_mapped", "a: ok revoke_rw_after_unmap",
                 "a: ok read_only_page_unchanged", "b: ok second_map_at_same_frame_refused"):
        assert name in lines
    foreign = host.machines[2].vcpu.foreign
    assert (foreign.mapped, foreign.unmapped, foreign.refused_writes) == (2, 2, 1)


def test_under_shadow_paging_a_guest_map_is_refused_and_copy_still_works():
    _, results, lines = run_pair("shadow", refused=True)
    assert [r.status for r in results.values()] == [0, 0], "\n".join(lines)
    assert "b: ok map_refused_without_ept" in lines and "b: ok reply_by_copy_instead" in lines
    assert "a: ok reply_written_by_the_peer" in lines


# --- the EPT table keeps a foreign page where it was put ---------------------------

def ept_mmu(ram=4 * MiB):
    pool = bytearray(EptTable.pool_pages_for(ram) * 4096)
    return EptMmu(EptTable(pool, 0xFE_0010_0000), ram)


def test_a_foreign_page_replaces_a_ram_frame_until_unmapped_and_survives_dirty_logging():
    mmu = ept_mmu()
    hpa = FOREIGN_WINDOW + 3 * 4096
    mmu.map_foreign(0x123, hpa, writable=False)
    assert mmu.table.lookup(0x123_010) == (hpa | 0x10, R | X, 4096)
    assert mmu.table.lookup(0x124_000) == (0x124_000, RWX, 4096)      # its neighbours are RAM
    mmu.start_dirty_log(DirtyLog(4 * MiB))
    assert mmu.table.lookup(0x123_000)[0] == hpa                       # permissions change, target stays
    # a write to a read-only grant is never "resolved" by the dirty log into a writable page
    assert mmu.on_violation(0x123_008, 2, R | X) is None
    mmu.unmap_foreign(0x123)
    assert mmu.table.lookup(0x123_000) == (0x123_000, R | X, 4096)     # own frame, logged on write
    mmu.stop_dirty_log()
    assert mmu.table.lookup(0x123_000) == (0x123_000, RWX, 4096)
    with pytest.raises(ValueError, match="no foreign frame"):
        mmu.unmap_foreign(0x123)
    with pytest.raises(ValueError, match="window"):
        mmu.table.map_foreign(0x5000, 0x200_0000, RWX)                 # not a window page


# --- root mode sees what the guest sees ---------------------------------------------

def test_the_overlay_reads_and_writes_the_granted_page_and_refuses_read_only_writes():
    _, _, (a, b) = world(nr_guests=2)
    a.page(DATA_GFN)[:] = b"A" * 4096
    b.memory.write(0x300_000 - 4, b"own!own!")
    rw = a.page(DATA_GFN)
    overlay = PhysicalOverlay(b.memory, {0x300: rw})
    assert overlay.read(0x300_000 - 4, 8) == b"own!AAAA"               # across the boundary
    overlay.write_u32(0x300_ffc, 0x44434241)
    assert bytes(rw[-4:]) == b"ABCD" and b.memory.read(0x300_ffc, 4) != b"ABCD"
    assert overlay.read_u64(0x300_000) == int.from_bytes(b"AAAAAAAA", "little")
    overlay.pages[0x301] = a.page(DATA_GFN + 1).toreadonly()
    before, granted_before = b.memory.read(0x300_ff0, 0x20), bytes(rw[-16:])
    with pytest.raises(GuestMemoryError, match="read-only grant mapping"):
        overlay.write(0x300_ff0, b"x" * 0x20)                          # nothing written at all
    assert bytes(rw[-16:]) == granted_before and b.memory.read(0x300_ff0, 0x20) == before
    with pytest.raises(GuestMemoryError, match="outside guest RAM"):
        overlay.read(4 * MiB - 2, 4)


# --- the grant table and domains ----------------------------------------------------

def test_a_refusing_hook_leaves_no_pin_no_handle_and_clear_flags():
    _, _, (a, b) = world(nr_guests=2)
    a.grant_table.grant_access(8, b.domid, DATA_GFN)

    def refuse(mapping):
        raise GrantError(abi.GNTST_general_error, "not here")
    b.on_foreign_map = refuse
    with pytest.raises(GrantError, match="not here"):
        b.grant_table.map_grant_ref(HOST, 8, a.domid, 0x5000)
    assert a.grant_table.read_entry(8)["flags"] == abi.GTF_permit_access
    assert a.grant_table.pins(8) == (0, 0) and not a.foreign_pins and not b.grant_table.mappings()


def test_a_replaced_frame_is_out_of_reach_until_restored():
    _, _, (a, b) = world(nr_guests=2)
    pages_before = b.nr_pages
    b.replace_frame(0x5)
    assert not b.owns(0x5) and b.nr_pages == pages_before
    with pytest.raises(FrameError):
        b.release(0x5)                                   # no ballooning out the hidden page
    with pytest.raises(FrameError):
        b.replace_frame(0x5)
    with pytest.raises(GuestMemoryError):
        b.access.copy_from_guest(0x5000, 8)              # hypercall pointers by gpa: refused
    b.restore_frame(0x5)
    assert b.owns(0x5)
    with pytest.raises(FrameError, match="no foreign frame"):
        b.restore_frame(0x5)


def test_destroying_the_granter_first_drops_the_mappings_others_hold_of_it():
    table, _, (a, b, c) = world(nr_guests=3)
    unmapped = []
    b.on_foreign_map = lambda m: None
    b.on_foreign_unmap = unmapped.append
    a.grant_table.grant_access(8, b.domid, DATA_GFN)
    c.grant_table.grant_access(8, b.domid, DATA_GFN)
    from_a = b.grant_table.map_grant_ref(HOST, 8, a.domid, 0x5000)
    from_c = b.grant_table.map_grant_ref(RO, 8, c.domid, 0x6000)
    table.remove(a.domid)
    assert unmapped == [from_a] and not from_a.mapped and from_c.mapped
    assert b.grant_table.mappings() == [from_c]
