"""The PV platform without a CPU: hostile rings and notes, the timer, sleeps, upcalls, hvm_op."""

import io
import os
import struct

from elftools.elf.elffile import ELFFile

import pytest

from pyvmm.boot.pvboot import load_pv_kernel, plan_layout
from pyvmm.errors import BadImageError
from pyvmm.mm.memory import GuestMemory
from pyvmm.pv import abi
from pyvmm.pv.console import XENCONS_INTERFACE
from pyvmm.pv.domain import Domain, DomainTable
from pyvmm.pv.pv_platform import PvPlatform
from pyvmm.pv.xenstore import RingClient
from pyvmm.pv.xs_wire import XENSTORE_DOMAIN_INTERFACE
from tests.pv.hypercall_vm import FakeVcpu, hypercall

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PVGUEST = os.path.join(ROOT, "guests", "build", "pvguest.elf")
MiB = 1 << 20
HVM_OP = 34                     # __HYPERVISOR_hvm_op (xen.h)


class Clock:
    def __init__(self):
        self.now = 1_000_000_000

    def __call__(self):
        return self.now


@pytest.fixture
def platform():
    mem = GuestMemory(16 * MiB)
    boot = load_pv_kernel(PVGUEST, mem)
    out = bytearray()
    clock = Clock()
    pv = PvPlatform(mem, boot, out.extend, clock=clock)
    return pv, mem, boot, out, clock


def console_put(mem, page, data, prod_skew=0):
    off = XENCONS_INTERFACE.offsetof
    prod = struct.unpack_from("<I", mem.view, page + off("out_prod"))[0]
    for i, b in enumerate(data):
        mem.write_u8(page + off("out") + ((prod + i) & 2047), b)
    mem.write_u32(page + off("out_prod"), prod + len(data) + prod_skew)


def test_console_ring_is_drained_on_the_guests_event(platform):
    pv, mem, boot, out, _ = platform
    console_put(mem, boot.layout.console_page, b"a" * 1500)
    pv.guest.evtchn.send(pv.console_port)
    console_put(mem, boot.layout.console_page, b"b" * 1500)      # wraps around the 2048-byte ring
    pv.guest.evtchn.send(pv.console_port)
    assert bytes(out) == b"a" * 1500 + b"b" * 1500 and pv.console.bytes_out == 3000


def test_hostile_console_index_stops_only_the_console(platform):
    pv, mem, boot, out, _ = platform
    console_put(mem, boot.layout.console_page, b"ok", prod_skew=0x10000)
    pv.guest.evtchn.send(pv.console_port)
    assert out == b"" and "ahead of out_cons" in pv.console.broken
    # xenstore still answers the guest over its ring
    client = RingClient(pv.guest.page(boot.layout.store_gfn), lambda: pv.guest.evtchn.send(pv.store_port))
    assert client.read("domid") == b"1"
    assert pv.xenstore_conn.broken is None


def test_hostile_xenstore_index_breaks_only_that_connection(platform):
    pv, mem, boot, out, _ = platform
    req_prod = XENSTORE_DOMAIN_INTERFACE.offsetof("req_prod")
    mem.write_u32(boot.layout.store_page + req_prod, 0x7FFF_0000)   # far ahead of req_cons
    pv.guest.evtchn.send(pv.store_port)
    assert pv.xenstore_conn.broken
    console_put(mem, boot.layout.console_page, b"still here\n")
    pv.guest.evtchn.send(pv.console_port)
    assert out == b"still here\n"


def test_timer_fires_virq_and_upcall_follows_mask_and_vector(platform):
    pv, _, _, _, clock = platform
    port = pv.guest.evtchn.bind_virq(abi.VIRQ_TIMER, 0)
    pv.set_timer(5_000_000)
    assert pv.next_deadline() == pv.boot_ns + 5_000_000
    assert not pv.tick(pv.boot_ns + 4_999_999)
    pv.tick(pv.boot_ns + 5_000_000)
    assert pv.guest.evtchn.is_pending(port) and pv.timer_fired == 1 and pv.next_deadline() is None
    assert pv.upcall_vector() is None           # upcalls start masked, and no vector yet
    pv.guest.shared_info()[abi.vcpu_info.offsetof("evtchn_upcall_mask")] = 0
    assert pv.upcall_vector() is None
    pv.guest.upcall_vector = 0xF3
    assert pv.upcall_vector() == 0xF3 and pv.wakes(clock())


def test_poll_wakes_on_its_port_or_timeout(platform):
    pv, _, _, _, _ = platform
    port = pv.guest.evtchn.alloc_unbound(abi.DOMID_SELF, abi.DOMID_SELF)
    pv.start_poll([port], 1_000)
    assert not pv.wakes(pv.boot_ns + 10)
    assert pv.wakes(pv.boot_ns + 1_000) and pv.poll_ports is None
    pv.start_poll([port], 0)
    assert pv.next_deadline() is None
    pv.guest.evtchn.set_pending(port)
    assert pv.wakes(pv.boot_ns)


def test_vcpu_time_info_is_consistent(platform):
    pv, _, _, _, clock = platform
    clock.now += 123_456
    pv.update_time(0)
    t = abi.vcpu_time_info.unpack(pv.guest.shared_info()[abi.vcpu_info.offsetof("time"):])
    assert t["version"] % 2 == 0 and t["version"] >= 4
    assert t["system_time"] == 123_456 and t["tsc_timestamp"] == 2 * 123_456
    assert (t["tsc_to_system_mul"], t["tsc_shift"]) == (1 << 31, 0)


def test_hvm_op_callback_vector():
    mem = GuestMemory(16 * MiB)
    table = DomainTable()
    table.add(Domain(0, name="dom0", privileged=True))
    guest = table.add(Domain(1, mem))
    other = table.add(Domain(2, GuestMemory(16 * MiB)))
    vm = FakeVcpu(guest, table)
    at = 0x10000

    def set_param(domid, index, value, cmd=abi.HVMOP_set_param):
        mem.write(at, abi.xen_hvm_param.pack(domid=domid, index=index, value=value))
        return hypercall(vm, HVM_OP, cmd, at)

    vec = abi.HVM_PARAM_CALLBACK_TYPE_VECTOR << 56
    assert set_param(abi.DOMID_SELF, abi.HVM_PARAM_CALLBACK_IRQ, vec | 0xF3) == 0 and guest.upcall_vector == 0xF3
    assert set_param(abi.DOMID_SELF, abi.HVM_PARAM_CALLBACK_IRQ, 0, cmd=abi.HVMOP_get_param) == 0
    assert abi.xen_hvm_param.unpack(mem.read(at, 16))["value"] == vec | 0xF3
    assert set_param(abi.DOMID_SELF, abi.HVM_PARAM_CALLBACK_IRQ, vec | 0x05) == -abi.EINVAL
    assert set_param(abi.DOMID_SELF, abi.HVM_PARAM_CALLBACK_IRQ, 1 << 56 | 0x30) == -abi.EINVAL
    assert set_param(abi.DOMID_SELF, 7, vec | 0x30) == -abi.EINVAL
    assert set_param(2, abi.HVM_PARAM_CALLBACK_IRQ, vec | 0x30) == -abi.EPERM and other.upcall_vector is None
    assert set_param(0x7000, abi.HVM_PARAM_CALLBACK_IRQ, vec | 0x30) == -abi.ESRCH
    assert hypercall(vm, HVM_OP, abi.HVMOP_set_param, 0x7FFF_F000_0000) == -abi.EFAULT
    assert hypercall(vm, HVM_OP, 99, at) == -abi.ENOSYS
    assert set_param(abi.DOMID_SELF, abi.HVM_PARAM_CALLBACK_IRQ, 0) == 0 and guest.upcall_vector is None


def _note(ntype, desc, name=b"Xen\0"):
    pad = lambda b: b + bytes(-len(b) % 4)
    return struct.pack("<III", len(name), len(desc), ntype) + pad(name) + pad(desc)


def _with_notes(tmp_path, notes):
    """pvguest.elf with its .note.Xen bytes replaced by ``notes`` (same length, zero padded)."""
    data = bytearray(open(PVGUEST, "rb").read())
    seg = [s for s in ELFFile(io.BytesIO(bytes(data))).iter_segments() if s["p_type"] == "PT_NOTE"][0]
    off, size = seg["p_offset"], seg["p_filesz"]
    assert len(notes) <= size
    data[off:off + size] = notes + _note(0x7777, bytes(size - len(notes) - 16), b"pad\0")[:size - len(notes)]
    path = tmp_path / "k.elf"
    path.write_bytes(bytes(data))
    return str(path)


def test_notes_without_hypercall_page_are_refused(tmp_path):
    path = _with_notes(tmp_path, _note(abi.XEN_ELFNOTE_ENTRY, struct.pack("<Q", 0x100000)))
    mem = GuestMemory(16 * MiB)
    with pytest.raises(BadImageError, match="HYPERCALL_PAGE"):
        load_pv_kernel(path, mem)
    assert mem.read(0x100000, 16) == bytes(16)          # nothing was loaded


def test_bad_note_values_are_refused(tmp_path):
    ok = _note(abi.XEN_ELFNOTE_ENTRY, struct.pack("<Q", 0x100000))
    cases = [
        (ok + _note(abi.XEN_ELFNOTE_HYPERCALL_PAGE, b"\1\2\3"), "3-byte value"),
        (ok + _note(abi.XEN_ELFNOTE_HYPERCALL_PAGE, struct.pack("<Q", 0x100000))
         + _note(abi.XEN_ELFNOTE_VIRT_BASE, struct.pack("<Q", 0xFFFFFFFF80000000)), "VIRT_BASE"),
        (ok + _note(abi.XEN_ELFNOTE_HYPERCALL_PAGE, struct.pack("<Q", 0x40000000)), "HYPERCALL_PAGE 0x40000000"),
        (struct.pack("<III", 4, 0x1000, 1) + b"Xen\0", "run past"),
    ]
    for notes, message in cases:
        with pytest.raises(BadImageError, match=message):
            load_pv_kernel(_with_notes(tmp_path, notes), GuestMemory(16 * MiB))


def test_bootstrap_region_must_fit_in_ram():
    with pytest.raises(BadImageError, match="beyond guest RAM"):
        plan_layout("k.elf", 4 * MiB, 0x3F8000, 0)
    lay = plan_layout("k.elf", 16 * MiB, 0x104321, 100)
    assert lay.mod_start == 0x105000 and lay.region_end % (4 * MiB) == 0
    assert lay.stack_top <= lay.region_end and len(lay.grant_frames) == 4
