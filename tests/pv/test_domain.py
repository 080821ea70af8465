"""Domains: frame ownership (ballooning), guest pointers, shared_info, the domain table."""

import pytest

from pyvmm.errors import ConfigError, FrameError, GuestMemoryError
from pyvmm.mm.memory import GuestMemory
from pyvmm.pv import abi
from pyvmm.pv.domain import Domain, DomainTable

from .pvworld import MiB, world


def test_a_guest_owns_all_its_frames_and_balloons_them_out_and_in():
    dom = Domain(5, GuestMemory(2 * MiB))
    assert dom.nr_pages == 512 and dom.owns(0) and dom.owns(511) and not dom.owns(512)
    dom.page(0x40)[:4] = b"data"
    dom.release(0x40)
    assert not dom.owns(0x40) and dom.nr_pages == 511
    with pytest.raises(FrameError, match="not a frame this domain owns"):
        dom.page(0x40)
    with pytest.raises(FrameError, match="cannot release"):
        dom.release(0x40)
    dom.populate(0x40)
    assert dom.page(0x40) == bytes(4096)                 # a repopulated frame reads as zeros
    with pytest.raises(FrameError, match="already populated"):
        dom.populate(0x40)
    with pytest.raises(FrameError, match="outside"):
        dom.populate(512)
    with pytest.raises(FrameError, match="not a frame"):
        dom.page(-1)


def test_guest_pointers_reach_only_owned_frames_and_fail_whole():
    dom = Domain(1, GuestMemory(2 * MiB))
    dom.release(0x11)
    dom.access.copy_to_guest(0x10FF0, b"x" * 16)
    assert dom.access.copy_from_guest(0x10FF0, 16) == b"x" * 16
    with pytest.raises(GuestMemoryError, match="does not own"):
        dom.access.copy_to_guest(0x10FF8, b"y" * 16)     # spills into frame 0x11
    assert dom.memory.read(0x10FF8, 8) == b"x" * 8       # nothing was written
    with pytest.raises(GuestMemoryError):
        dom.access.copy_from_guest(2 * MiB - 4, 8)
    with pytest.raises(GuestMemoryError):
        dom.access.copy_from_guest(-4, 8)
    python_side = Domain(0)
    with pytest.raises(GuestMemoryError):
        python_side.access.copy_from_guest(0, 1)


def test_shared_info_moves_into_a_guest_frame_and_that_frame_stays():
    dom = Domain(1, GuestMemory(2 * MiB))
    dom.shared_info()[abi.shared_info.offsetof("wc_sec")] = 42
    dom.place_shared_info(0x30)
    assert dom.memory.read_u8(0x30 * 4096 + abi.shared_info.offsetof("wc_sec")) == 42
    with pytest.raises(FrameError, match="shared_info"):
        dom.release(0x30)
    with pytest.raises(FrameError):
        dom.place_shared_info(0x200)                     # beyond RAM


def test_grant_frames_must_be_the_domains_own_and_stay_put():
    with pytest.raises(FrameError):
        Domain(1, GuestMemory(2 * MiB), grant_frames=[0x10, 0x999])
    with pytest.raises(ValueError, match="repeat"):
        Domain(1, GuestMemory(2 * MiB), grant_frames=[0x10, 0x10])
    dom = Domain(1, GuestMemory(2 * MiB), grant_frames=[0x10, 0x11])
    with pytest.raises(FrameError, match="grant-table frame"):
        dom.release(0x10)
    dom.release(0x11)          # reserved but not yet part of the table: the guest may give it back


@pytest.mark.parametrize("domid, vcpus", [(abi.DOMID_SELF, 1), (-1, 1), (0x8000, 1), (1, 0), (1, 33)])
def test_bad_domain_configurations(domid, vcpus):
    with pytest.raises(ConfigError):
        Domain(domid, nr_vcpus=vcpus)


def test_domain_table_resolves_self_and_refuses_duplicates():
    table, dom0, (g1, g2) = world(nr_guests=2)
    assert table.get(1) is g1 and table.get(abi.DOMID_SELF) is None
    assert table.resolve(g2, abi.DOMID_SELF) is g2 and g1.resolve(abi.DOMID_SELF) is g1
    assert g1.lookup(abi.DOMID_SELF) is None and g1.lookup(2) is g2 and g1.lookup(9) is None
    with pytest.raises(ConfigError, match="already in use"):
        table.add(Domain(1))
    with pytest.raises(ConfigError, match="already belongs"):
        DomainTable().add(g1)
    assert sorted(d.domid for d in table) == [0, 1, 2] and len(table) == 3
    table.remove(2)
    assert table.get(2) is None and g1.lookup(2) is None and len(table) == 2
    with pytest.raises(ConfigError, match="no domain 2"):
        table.remove(2)


def test_a_domain_outside_a_table_knows_only_itself():
    dom = Domain(3, GuestMemory(2 * MiB))
    assert dom.resolve(abi.DOMID_SELF) is dom and dom.resolve(3) is dom and dom.resolve(0) is None
