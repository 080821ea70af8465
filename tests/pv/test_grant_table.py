"""Grant tables v1 as a guest and a Python backend see them, including hostile guests."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.errors import FrameError, GrantError
from pyvmm.pv import abi
from pyvmm.pv.grant_table import MAX_OPS_PER_CALL, grant_table_op, status_text

from .pvworld import DATA_GFN, GRANT_FRAMES, SCRATCH, call_gnttab, copy_op, fill, world

HOST = abi.GNTMAP_host_map
RO = abi.GNTMAP_host_map | abi.GNTMAP_readonly
MAP, UNMAP, COPY = abi.gnttab_map_grant_ref, abi.gnttab_unmap_grant_ref, abi.gnttab_copy
SRC, DST = abi.GNTCOPY_source_gref, abi.GNTCOPY_dest_gref


@pytest.fixture
def w():
    return world(nr_guests=3)


def flags_of(guest, ref):
    return guest.grant_table.read_entry(ref)["flags"]


def status_of(fn, *args):
    with pytest.raises(GrantError) as info:
        fn(*args)
    return info.value.code


# --- the shared table ---------------------------------------------------------------

def test_entries_are_grant_entry_v1_bytes_in_the_guests_frames(w):
    _, _, (g1, *_) = w
    g1.grant_table.grant_access(9, 0, 0x12345, readonly=True)
    raw = g1.memory.read(GRANT_FRAMES[0] * 4096 + 9 * 8, 8)
    assert raw == bytes.fromhex("0500" "0000" "45230100")   # permit|readonly, dom 0, frame
    g1.memory.write(GRANT_FRAMES[0] * 4096 + 10 * 8, bytes.fromhex("0100" "0000" "00020000"))
    assert g1.grant_table.read_entry(10) == {"flags": 1, "domid": 0, "frame": 0x200}
    assert g1.grant_table.nr_entries == 512 and g1.grant_table.max_frames == 4


def test_map_write_unmap_tracks_reading_writing_and_revocation(w):
    _, dom0, (g1, *_) = w
    g1.grant_table.grant_access(8, 0, DATA_GFN)
    m = dom0.grant_table.map_grant_ref(HOST, 8, 1)
    assert flags_of(g1, 8) == abi.GTF_permit_access | abi.GTF_reading | abi.GTF_writing
    m.page[100:105] = b"hello"
    assert g1.memory.read(DATA_GFN * 4096 + 100, 5) == b"hello"
    assert not g1.grant_table.end_access(8)            # in use: revocation refused
    assert g1.grant_table.read_entry(8)["flags"] & abi.GTF_permit_access
    dom0.grant_table.unmap_grant_ref(m.handle)
    assert flags_of(g1, 8) == abi.GTF_permit_access
    assert g1.grant_table.end_access(8) and flags_of(g1, 8) == 0
    with pytest.raises(GrantError, match="unmapped"):
        m.page[0]                                       # the view died with the mapping
    assert status_of(dom0.grant_table.map_grant_ref, HOST, 8, 1) == abi.GNTST_general_error


def test_readonly_grant_maps_only_readonly(w):
    _, dom0, (g1, *_) = w
    fill(g1, DATA_GFN, 0xAB)
    g1.grant_table.grant_access(8, 0, DATA_GFN, readonly=True)
    assert status_of(dom0.grant_table.map_grant_ref, HOST, 8, 1) == abi.GNTST_general_error
    assert flags_of(g1, 8) == abi.GTF_permit_access | abi.GTF_readonly
    m = dom0.grant_table.map_grant_ref(RO, 8, 1)
    assert flags_of(g1, 8) == abi.GTF_permit_access | abi.GTF_readonly | abi.GTF_reading
    assert m.page[0] == 0xAB
    with pytest.raises(TypeError):
        m.page[0] = 1
    dom0.grant_table.unmap_grant_ref(m.handle)
    assert flags_of(g1, 8) == abi.GTF_permit_access | abi.GTF_readonly


def test_writing_clears_with_the_last_writer_reading_with_the_last_mapping(w):
    _, dom0, (g1, *_) = w
    g1.grant_table.grant_access(8, 0, DATA_GFN)
    rw = dom0.grant_table.map_grant_ref(HOST, 8, 1)
    ro = dom0.grant_table.map_grant_ref(RO, 8, 1)
    assert g1.grant_table.pins(8) == (1, 1)
    dom0.grant_table.unmap_grant_ref(rw.handle)
    assert flags_of(g1, 8) == abi.GTF_permit_access | abi.GTF_reading
    dom0.grant_table.unmap_grant_ref(ro.handle)
    assert flags_of(g1, 8) == abi.GTF_permit_access and g1.grant_table.pins(8) == (0, 0)


def test_rewriting_a_mapped_entry_does_not_move_the_mapping(w):
    _, dom0, (g1, *_) = w
    g1.grant_table.grant_access(8, 0, DATA_GFN)
    m = dom0.grant_table.map_grant_ref(HOST, 8, 1)
    g1.grant_table.write_entry(8, abi.GTF_permit_access | abi.GTF_reading | abi.GTF_writing, 0, 0x300)
    m2 = dom0.grant_table.map_grant_ref(HOST, 8, 1)
    assert m.gfn == m2.gfn == DATA_GFN
    m2.page[0] = 7
    assert g1.memory.read_u8(DATA_GFN * 4096) == 7


def test_pinned_frame_cannot_be_ballooned_out(w):
    _, dom0, (g1, *_) = w
    g1.grant_table.grant_access(8, 0, DATA_GFN)
    m = dom0.grant_table.map_grant_ref(HOST, 8, 1)
    with pytest.raises(FrameError, match="still mapped"):
        g1.release(DATA_GFN)
    dom0.grant_table.unmap_grant_ref(m.handle)
    g1.release(DATA_GFN)
    assert status_of(dom0.grant_table.map_grant_ref, HOST, 8, 1) == abi.GNTST_bad_page
    assert flags_of(g1, 8) == abi.GTF_permit_access      # the failed pin left no bits behind


@pytest.mark.parametrize("flags, ref, dom, status", [
    (0, 8, 1, abi.GNTST_bad_gntref),                              # neither host nor device map
    (abi.GNTMAP_device_map, 8, 1, abi.GNTST_general_error),
    (HOST | abi.GNTMAP_contains_pte, 8, 1, abi.GNTST_general_error),
    (HOST, 8, 77, abi.GNTST_bad_domain),
    (HOST, 8, abi.DOMID_SELF, abi.GNTST_bad_domain),              # map names the granter by id
    (HOST, 512, 1, abi.GNTST_bad_gntref),                         # past the table's one frame
    (HOST, 0xFFFFFFFF, 1, abi.GNTST_bad_gntref),
    (HOST, 9, 1, abi.GNTST_general_error),                        # granted to domain 2
    (HOST, 10, 1, abi.GNTST_general_error),                       # GTF_invalid
    (HOST, 11, 1, abi.GNTST_bad_page),                            # frame beyond the granter's RAM
])
def test_map_refusals(w, flags, ref, dom, status):
    _, dom0, (g1, *_) = w
    g1.grant_table.grant_access(9, 2, DATA_GFN)
    g1.grant_table.grant_access(11, 0, 0xFFFFF)
    assert status_of(dom0.grant_table.map_grant_ref, flags, ref, dom) == status
    assert status_text(status) == abi.GNTST_MESSAGES[-status]
    assert g1.grant_table.pins(ref) == (0, 0) and not g1.foreign_pins


def test_map_runs_out_of_handles_with_no_space():
    _, dom0, (g1,) = world(nr_guests=1)
    dom0.grant_table = type(dom0.grant_table)(dom0, max_maptrack=2)
    g1.grant_table.grant_access(8, 0, DATA_GFN)
    dom0.grant_table.map_grant_ref(HOST, 8, 1)
    dom0.grant_table.map_grant_ref(HOST, 8, 1)
    assert status_of(dom0.grant_table.map_grant_ref, HOST, 8, 1) == abi.GNTST_no_space
    assert g1.grant_table.pins(8) == (0, 2)


def test_unmap_refusals(w):
    _, dom0, (g1, *_) = w
    g1.grant_table.grant_access(8, 0, DATA_GFN)
    m = dom0.grant_table.map_grant_ref(HOST, 8, 1)
    gt = dom0.grant_table
    assert status_of(gt.unmap_grant_ref, 999) == abi.GNTST_bad_handle
    assert status_of(gt.unmap_grant_ref, 2 ** 32 - 1) == abi.GNTST_bad_handle
    assert status_of(gt.unmap_grant_ref, m.handle, 0x5000) == abi.GNTST_general_error
    assert status_of(gt.unmap_grant_ref, m.handle, 0, 0x1000) == abi.GNTST_bad_dev_addr
    gt.unmap_grant_ref(m.handle)
    assert status_of(gt.unmap_grant_ref, m.handle) == abi.GNTST_bad_handle


def test_a_guest_maps_a_grant_through_the_hypercall(w):
    _, _, (g1, g2, _) = w
    placed = []
    g2.on_foreign_map = placed.append
    g2.on_foreign_unmap = lambda m: placed.remove(m)
    g1.grant_table.grant_access(8, 2, DATA_GFN)
    rc, (op,) = call_gnttab(g2, abi.GNTTABOP_map_grant_ref, MAP,
                            [{"host_addr": 0x300000, "flags": HOST, "ref": 8, "dom": 1}])
    assert rc == 0 and op["status"] == abi.GNTST_okay and op["dev_bus_addr"] == 0
    assert placed[0].host_addr == 0x300000 and placed[0].gfn == DATA_GFN
    rc, (op,) = call_gnttab(g2, abi.GNTTABOP_unmap_grant_ref, UNMAP,
                            [{"host_addr": 0x300000, "handle": op["handle"]}])
    assert rc == 0 and op["status"] == abi.GNTST_okay and placed == []


def test_a_guest_map_needs_a_frame_of_its_own_and_a_vmm_that_can_place_it(w):
    _, _, (g1, g2, _) = w
    g1.grant_table.grant_access(8, 2, DATA_GFN)
    op = {"host_addr": 0x300000, "flags": HOST, "ref": 8, "dom": 1}
    _, (out,) = call_gnttab(g2, abi.GNTTABOP_map_grant_ref, MAP, [op])
    assert out["status"] == abi.GNTST_general_error     # no on_foreign_map hook
    g2.on_foreign_map = lambda m: None
    _, (out,) = call_gnttab(g2, abi.GNTTABOP_map_grant_ref, MAP, [dict(op, host_addr=1 << 40)])
    assert out["status"] == abi.GNTST_bad_virt_addr
    assert g1.grant_table.pins(8) == (0, 0) and flags_of(g1, 8) == abi.GTF_permit_access
    assert not g1.foreign_pins


def test_batched_ops_get_statuses_one_by_one(w):
    _, _, (g1, g2, _) = w
    g2.on_foreign_map = lambda m: None
    g1.grant_table.grant_access(8, 2, DATA_GFN)
    ops = [{"host_addr": 0x300000, "flags": HOST, "ref": 8, "dom": 1},
           {"host_addr": 0x301000, "flags": HOST, "ref": 9, "dom": 1},
           {"host_addr": 0x302000, "flags": HOST, "ref": 8, "dom": 42},
           {"host_addr": 0x303000, "flags": RO, "ref": 8, "dom": 1}]
    rc, back = call_gnttab(g2, abi.GNTTABOP_map_grant_ref, MAP, ops)
    assert rc == 0
    assert [b["status"] for b in back] == [0, abi.GNTST_general_error, abi.GNTST_bad_domain, 0]
    assert back[0]["handle"] != back[3]["handle"] and g1.grant_table.pins(8) == (1, 1)


# --- copy ---------------------------------------------------------------------------

def test_copy_between_a_grant_and_a_frame_both_ways(w):
    _, _, (g1, g2, _) = w
    fill(g1, DATA_GFN, 0x11)
    fill(g2, 0x250, 0x22)
    g1.grant_table.grant_access(8, 2, DATA_GFN)
    ops = [copy_op((8, 1, 100), (0x250, abi.DOMID_SELF, 0), 50, SRC),
           copy_op((0x250, 2, 4000), (8, 1, 0), 96, DST)]
    rc, back = call_gnttab(g2, abi.GNTTABOP_copy, COPY, ops)
    assert rc == 0 and [b["status"] for b in back] == [0, 0]
    assert g2.memory.read(0x250 * 4096, 51) == b"\x11" * 50 + b"\x22"
    assert g1.memory.read(DATA_GFN * 4096, 97) == b"\x22" * 96 + b"\x11"
    assert flags_of(g1, 8) == abi.GTF_permit_access and not g1.foreign_pins


def test_copy_gref_to_gref_by_a_python_backend(w):
    _, dom0, (g1, g2, _) = w
    g1.memory.write(DATA_GFN * 4096, b"request")
    g1.grant_table.grant_access(8, 0, DATA_GFN, readonly=True)
    g2.grant_table.grant_access(8, 0, 0x260)
    dom0.grant_table.copy(copy_op((8, 1, 0), (8, 2, 4089), 7, SRC | DST))
    assert g2.memory.read(0x260 * 4096 + 4089, 7) == b"request"


@pytest.mark.parametrize("op, status", [
    (copy_op((8, 1, 4000), (0x250, 2, 0), 97, SRC), abi.GNTST_bad_copy_arg),    # source crosses
    (copy_op((8, 1, 0), (0x250, 2, 4095), 2, SRC), abi.GNTST_bad_copy_arg),     # dest crosses
    (copy_op((8, 1, 0xFFFF), (0x250, 2, 0), 0xFFFF, SRC), abi.GNTST_bad_copy_arg),
    (copy_op((DATA_GFN, 1, 0), (0x250, 2, 0), 8, 0), abi.GNTST_permission_denied),  # g1's gmfn
    (copy_op((0x250, 2, 0), (DATA_GFN, 1, 0), 8, 0), abi.GNTST_permission_denied),
    (copy_op((0x99999, 2, 0), (0x250, 2, 0), 8, 0), abi.GNTST_bad_page),        # not g2's frame
    (copy_op((1 << 60, 2, 0), (0x250, 2, 0), 8, 0), abi.GNTST_bad_page),
    (copy_op((8, 9, 0), (0x250, 2, 0), 8, SRC), abi.GNTST_bad_domain),
    (copy_op((600, 1, 0), (0x250, 2, 0), 8, SRC), abi.GNTST_bad_gntref),
    (copy_op((0x250, 2, 0), (9, 1, 0), 8, DST), abi.GNTST_general_error),       # read-only grant
    (copy_op((0x250, 2, 0), (10, 1, 0), 8, DST), abi.GNTST_general_error),      # granted to dom 3
])
def test_copy_refusals_leave_memory_and_flags_alone(w, op, status):
    _, _, (g1, g2, _) = w
    fill(g1, DATA_GFN, 0x11)
    fill(g2, 0x250, 0x22)
    g1.grant_table.grant_access(8, 2, DATA_GFN)
    g1.grant_table.grant_access(9, 2, DATA_GFN, readonly=True)
    g1.grant_table.grant_access(10, 3, DATA_GFN)
    rc, (back,) = call_gnttab(g2, abi.GNTTABOP_copy, COPY, [op])
    assert rc == 0 and back["status"] == status
    assert g1.page(DATA_GFN) == b"\x11" * 4096 and g2.page(0x250) == b"\x22" * 4096
    assert [flags_of(g1, r) & (abi.GTF_reading | abi.GTF_writing) for r in (8, 9, 10)] == [0, 0, 0]
    assert not g1.foreign_pins


def test_copy_within_one_page_overlapping_moves_like_memmove(w):
    _, _, (g1, *_) = w
    g1.memory.write(DATA_GFN * 4096, bytes(range(16)))
    g1.grant_table.copy(copy_op((DATA_GFN, 1, 0), (DATA_GFN, 1, 4), 8, 0))
    assert g1.memory.read(DATA_GFN * 4096, 16) == bytes([0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15])


# --- setup_table, query_size, versions -----------------------------------------------

def test_setup_table_grows_and_lists_the_frames(w):
    _, dom0, (g1, *_) = w
    op = {"dom": abi.DOMID_SELF, "nr_frames": 3, "frame_list": SCRATCH + 0x100}
    rc, (back,) = call_gnttab(g1, abi.GNTTABOP_setup_table, abi.gnttab_setup_table, [op])
    assert rc == 0 and back["status"] == abi.GNTST_okay
    assert [g1.memory.read_u64(SCRATCH + 0x100 + 8 * i) for i in range(3)] == GRANT_FRAMES[:3]
    assert g1.grant_table.nr_entries == 3 * 512
    rc, (q,) = call_gnttab(g1, abi.GNTTABOP_query_size, abi.gnttab_query_size, [{"dom": 1}])
    assert rc == 0 and (q["nr_frames"], q["max_nr_frames"], q["status"]) == (3, 4, 0)
    assert dom0.grant_table.query_size(1) == (3, 4)     # privileged: any domain


@pytest.mark.parametrize("op, status", [
    ({"dom": abi.DOMID_SELF, "nr_frames": 5}, abi.GNTST_general_error),      # above max
    ({"dom": abi.DOMID_SELF, "nr_frames": 0xFFFFFFFF}, abi.GNTST_general_error),
    ({"dom": 2, "nr_frames": 1}, abi.GNTST_permission_denied),
    ({"dom": 88, "nr_frames": 1}, abi.GNTST_bad_domain),
    ({"dom": abi.DOMID_SELF, "nr_frames": 2, "frame_list": 1 << 40}, abi.GNTST_bad_virt_addr),
])
def test_setup_table_refusals(w, op, status):
    _, _, (g1, g2, _) = w
    op.setdefault("frame_list", SCRATCH + 0x100)
    rc, (back,) = call_gnttab(g1, abi.GNTTABOP_setup_table, abi.gnttab_setup_table, [op])
    assert rc == 0 and back["status"] == status
    assert g2.grant_table.nr_frames == 1


def test_query_size_refusals(w):
    _, _, (g1, *_) = w
    for dom, status in ((2, abi.GNTST_permission_denied), (99, abi.GNTST_bad_domain)):
        rc, (q,) = call_gnttab(g1, abi.GNTTABOP_query_size, abi.gnttab_query_size, [{"dom": dom}])
        assert rc == 0 and q["status"] == status


def test_only_version_1_is_offered(w):
    _, _, (g1, *_) = w
    for version, rc_want in ((1, 0), (2, -abi.ENOSYS), (3, -abi.EINVAL)):
        rc, (back,) = call_gnttab(g1, abi.GNTTABOP_set_version, abi.gnttab_set_version,
                                  [{"version": version}])
        assert rc == rc_want and back["version"] == 1
    rc, (back,) = call_gnttab(g1, abi.GNTTABOP_get_version, abi.gnttab_get_version,
                              [{"dom": abi.DOMID_SELF}])
    assert rc == 0 and back["version"] == 1
    assert call_gnttab(g1, abi.GNTTABOP_get_version, abi.gnttab_get_version, [{"dom": 2}])[0] == -abi.EPERM
    assert call_gnttab(g1, abi.GNTTABOP_get_version, abi.gnttab_get_version, [{"dom": 50}])[0] == -abi.ESRCH


def test_place_frame_moves_the_entries_to_the_guests_chosen_frame(w):
    _, dom0, (g1, *_) = w
    g1.grant_table.grant_access(8, 0, DATA_GFN)
    g1.grant_table.place_frame(0, 0x180)
    assert g1.memory.read(0x180 * 4096 + 64, 8) == abi.grant_entry_v1.pack(flags=1, domid=0, frame=DATA_GFN)
    assert dom0.grant_table.map_grant_ref(HOST, 8, 1).gfn == DATA_GFN
    assert status_of(g1.grant_table.place_frame, 4, 0x181) == abi.GNTST_general_error


# --- hostile hypercalls ---------------------------------------------------------------

@pytest.mark.parametrize("cmd", [abi.GNTTABOP_map_grant_ref, abi.GNTTABOP_unmap_grant_ref,
                                 abi.GNTTABOP_copy, abi.GNTTABOP_setup_table,
                                 abi.GNTTABOP_query_size, abi.GNTTABOP_set_version,
                                 abi.GNTTABOP_get_version])
@pytest.mark.parametrize("uop", [
    1 << 40,                 # far outside RAM
    0x3FFFFE,                # straddles the end of 4 MiB of RAM
    0x2FFFFE,                # starts in frame 0x2ff, runs into 0x300, ballooned out
    0x300000,                # frame 0x300 itself, ballooned out
    -8 & (2 ** 64 - 1),      # wraps around
])
def test_bad_pointers_give_efault_and_change_nothing(w, cmd, uop):
    _, _, (g1, g2, _) = w
    g2.release(0x300)
    g2.release(0x301)
    g2.grant_table.grant_access(8, 0, DATA_GFN)
    before = bytes(g2.memory.view)
    assert grant_table_op(g2, cmd, uop, 1) == -abi.EFAULT
    assert bytes(g2.memory.view) == before and not g2.foreign_pins


def test_op_array_running_off_ram_does_the_ops_before_the_fault(w):
    _, _, (g1, g2, _) = w
    g2.on_foreign_map = lambda m: None
    g1.grant_table.grant_access(8, 2, DATA_GFN)
    at = g2.memory.size - MAP.size
    op = {"host_addr": 0x300000, "flags": HOST, "ref": 8, "dom": 1}
    g2.memory.write(at, MAP.pack(**op))
    assert grant_table_op(g2, abi.GNTTABOP_map_grant_ref, at, 2) == -abi.EFAULT
    assert MAP.unpack(g2.memory.read(at, MAP.size))["status"] == 0
    assert g1.grant_table.pins(8) == (0, 1)


@pytest.mark.parametrize("cmd, count, rc", [
    (abi.GNTTABOP_map_grant_ref, 0x8000_0000, -abi.EINVAL),
    (abi.GNTTABOP_copy, 0xFFFF_FFFF, -abi.EINVAL),
    (abi.GNTTABOP_unmap_grant_ref, MAX_OPS_PER_CALL + 1, -abi.E2BIG),
    (abi.GNTTABOP_setup_table, 2, -abi.EINVAL),
    (abi.GNTTABOP_query_size, 0, -abi.EINVAL),
    (abi.GNTTABOP_transfer, 1, -abi.ENOSYS),
    (abi.GNTTABOP_dump_table, 1, -abi.ENOSYS),
    (99, 1, -abi.ENOSYS),
    (abi.GNTTABOP_map_grant_ref, 0, 0),
])
def test_bad_counts_and_commands(w, cmd, count, rc):
    _, _, (g1, *_) = w
    assert grant_table_op(g1, cmd, SCRATCH, count) == rc


def test_other_domains_carry_on_after_a_hostile_guest(w):
    _, dom0, (g1, g2, g3) = w
    g1.grant_table.grant_access(8, 0, DATA_GFN)
    good = dom0.grant_table.map_grant_ref(HOST, 8, 1)
    for cmd in range(0, 16):
        for uop in (0, SCRATCH, 1 << 40):
            for count in (1, 7, 0x7FFF_FFFF):
                grant_table_op(g3, cmd, uop, count)
    good.page[0] = 0x5A
    assert g1.memory.read_u8(DATA_GFN * 4096) == 0x5A and g1.grant_table.pins(8) == (0, 1)
    g2.grant_table.grant_access(8, 0, DATA_GFN)
    dom0.grant_table.unmap_grant_ref(dom0.grant_table.map_grant_ref(HOST, 8, 2).handle)


def test_destroying_a_domain_drops_its_mappings(w):
    table, _, (g1, g2, _) = w
    g2.on_foreign_map = lambda m: None
    g1.grant_table.grant_access(8, 2, DATA_GFN)
    g2.grant_table.map_grant_ref(HOST, 8, 1, 0x300000)
    table.remove(2)
    assert g1.grant_table.pins(8) == (0, 0) and flags_of(g1, 8) == abi.GTF_permit_access
    g1.release(DATA_GFN)


# --- invariants under any sequence of operations ---------------------------------------

_OPS = st.lists(st.tuples(st.sampled_from(["grant", "grant_ro", "revoke", "map", "map_ro",
                                           "unmap", "copy_in", "copy_out", "release"]),
                          st.integers(8, 11), st.integers(0, 7)), max_size=40)


@settings(max_examples=60, deadline=None)
@given(ops=_OPS)
def test_flags_pins_and_frames_stay_consistent(ops):
    """Whatever dom0 and the granting guest do, GTF_reading is set exactly while an
    entry is mapped, GTF_writing exactly while it is mapped writable, a mapped grant
    cannot be revoked, and pinned frames are exactly the mapped ones."""
    _, dom0, (g1,) = world(nr_guests=1)
    gt, handles = g1.grant_table, []
    for kind, ref, n in ops:
        gfn = DATA_GFN + n
        try:
            if kind in ("grant", "grant_ro") and gt.pins(ref) == (0, 0):
                gt.grant_access(ref, 0, gfn, readonly=kind == "grant_ro")
            elif kind == "revoke":
                assert gt.end_access(ref) == (gt.pins(ref) == (0, 0))
            elif kind in ("map", "map_ro"):
                handles.append(dom0.grant_table.map_grant_ref(HOST if kind == "map" else RO, ref, 1))
            elif kind == "unmap" and handles:
                dom0.grant_table.unmap_grant_ref(handles.pop(n % len(handles)).handle)
            elif kind in ("copy_in", "copy_out"):
                here = (gfn, abi.DOMID_SELF, 0)
                ends = ((ref, 1, 0), here) if kind == "copy_in" else (here, (ref, 1, 0))
                dom0.grant_table.copy(copy_op(*ends, 64, SRC if kind == "copy_in" else DST))
            elif kind == "release" and g1.owns(gfn):
                g1.release(gfn)
        except (GrantError, FrameError):
            pass
        for r in range(8, 12):
            readers, writers = gt.pins(r)
            flags = flags_of(g1, r)
            assert bool(flags & abi.GTF_reading) == (readers + writers > 0)
            assert bool(flags & abi.GTF_writing) == (writers > 0)
        assert sum(g1.foreign_pins.values()) == len(handles)
        assert all(g1.owns(m.gfn) and m.mapped for m in handles)
