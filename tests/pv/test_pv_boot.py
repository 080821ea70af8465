"""`pyvmm boot --pv`: the PV guest boots the Xen way and uses console, xenstore, timer
upcalls, event channels and grants with domain 0; kernels without Xen notes are refused."""

import os
import subprocess
import sys

import pytest

from pyvmm.errors import BadImageError
from pyvmm.machine import Machine, VmConfig
from pyvmm.pv import abi

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PVGUEST = os.path.join(ROOT, "guests", "build", "pvguest.elf")
HELLO = os.path.join(ROOT, "guests", "build", "hello.elf")
GRANT_TEXT = b"pvguest: a page granted to domain 0"


def boot_pv(**kw):
    out = bytearray()
    m = Machine(VmConfig(kernel=PVGUEST, pv=True, console=out.extend, **kw))
    return m, out


class Dom0Frontend:
    """What a backend in domain 0 does when the guest publishes data/gref and data/port:
    map the grant, read the page, bind the port and signal the guest."""

    def __init__(self, pv):
        self.pv = pv
        self.data = None
        self.port = None
        home = "/local/domain/1/data"
        pv.xs.watch(f"{home}/port", self.on_port)

    def on_port(self, path, token):
        try:
            gref = int(self.pv.xs.read("/local/domain/1/data/gref"))
            port = int(self.pv.xs.read(path))
        except Exception:               # the watch's first event: nothing published yet
            return
        mapping = self.pv.dom0.grant_table.map_grant_ref(abi.GNTMAP_host_map | abi.GNTMAP_readonly, gref, 1)
        self.data = bytes(mapping.page[:len(GRANT_TEXT)])
        self.pv.dom0.grant_table.unmap_grant_ref(mapping.handle)
        self.port = self.pv.dom0.evtchn.bind_interdomain(1, port)
        self.pv.dom0.evtchn.send(self.port)


@pytest.mark.parametrize("mmu", ["ept", "shadow"])
def test_pv_guest_end_to_end(mmu):
    m, out = boot_pv(mmu=mmu)
    dom0 = Dom0Frontend(m.pv)
    status, reason = m.run()
    text = out.decode()
    assert (status, reason) == (0, "guest powered off (SCHEDOP_shutdown poweroff)"), text
    lines = text.splitlines()
    assert lines[0] == "pvguest: hello through console_io"
    assert lines[1] == "pvguest: hello through the console ring (xen-3.0-x86_64, pages: 16384)"
    assert "xenstore: domid=1 name=pvguest" in lines
    assert "timer: 5 upcalls on VIRQ_TIMER while blocked" in lines
    assert not [l for l in lines if l.startswith("FAIL")]
    assert lines[-1] == "pvguest: 21/21 checks passed"
    # domain 0 mapped the published grant and read what the guest wrote there
    assert dom0.data == GRANT_TEXT
    assert f"grant: domain 0 signalled port {m.pv.xs.read('/local/domain/1/data/port').decode()}" in lines
    assert m.pv.timer_fired >= 5 and m.pv.upcalls >= 5
    assert m.pv.console.broken is None and m.pv.xenstore_conn.broken is None


def test_pv_guest_without_dom0_listener_times_out_politely():
    m, out = boot_pv()
    assert m.run() == (0, "guest powered off (SCHEDOP_shutdown poweroff)")
    assert "grant: no signal from domain 0 on port 4" in out.decode().splitlines()


def test_start_info_as_the_guest_sees_it():
    m, _ = boot_pv(cmdline="console=hvc0 quiet")
    try:
        lay = m.boot.layout
        si = abi.start_info.unpack(m.memory.read(lay.start_info, abi.start_info.size))
        assert bytes(si["magic"]).rstrip(b"\0") == b"xen-3.0-x86_64"
        assert si["nr_pages"] == m.memory.size // 4096
        assert si["shared_info"] == lay.shared_info == m.pv.guest.shared_info_gfn * 4096
        assert si["store_mfn"] * 4096 == lay.store_page and si["store_evtchn"] == m.pv.store_port
        assert si["console"]["domU"] == {"mfn": lay.console_page // 4096, "evtchn": m.pv.console_port}
        # PML4, PDPT, 4 PDs, and the 4 KiB table of the 2 MiB page holding the kernel's code
        assert (si["pt_base"], si["nr_pt_frames"]) == (0x9000, 7)
        assert bytes(si["cmd_line"]).rstrip(b"\0") == b"console=hvc0 quiet"
        assert (si["mod_start"], si["mod_len"]) == (0, 0)
        assert m.memory.read_u64(si["mfn_list"] + 8 * 1234) == 1234
        # both ring ports are bound interdomain to domain 0
        for port in (m.pv.store_port, m.pv.console_port):
            st = m.pv.guest.evtchn.status(abi.DOMID_SELF, port)
            assert st["status"] == abi.EVTCHNSTAT_interdomain and st["u"]["interdomain"]["dom"] == 0
        e = m.boot.entry
        assert (e.rip, e.rsi, e.rsp) == (m.boot.notes.entry, lay.start_info, lay.stack_top)
        assert m.memory.read(m.boot.notes.hypercall_page + 32 * 17, 14) == bytes.fromhex("51 4153 b8 11000000 0f05 415b 59 c3")
    finally:
        m.close()


def test_the_identity_map_executes_only_the_kernels_code_segment():
    """The domain builder maps pages NX but those of PF_X segments (pvguest: .text and
    .rodata R|X, .data and .bss R|W), with EFER.NXE on: a fetch from the data segment,
    the bootstrap region or free RAM faults; code fetches and data stores do not."""
    from pyvmm.boot.elf import check_elf
    from pyvmm.errors import GuestFault
    from pyvmm.mm.pagewalk import Paging, translate
    m, _ = boot_pv()
    try:
        e = m.boot.entry
        assert e.efer & (1 << 11)
        paging = Paging(e.cr0, e.cr3, e.cr4, e.efer)
        with open(PVGUEST, "rb") as f:
            segments = check_elf(PVGUEST, f.read(), m.memory).segments
        code = [s for s in segments if s.flags & 1]
        data = [s for s in segments if not s.flags & 1]
        assert len(code) == 1 and len(data) == 1 and code[0].end <= data[0].paddr
        assert m.boot.kernel.executable == ((code[0].paddr, code[0].end),)
        for addr in (e.rip, m.boot.notes.hypercall_page, code[0].end - 1):
            assert translate(m.memory, paging, addr, fetch=True) == addr
        for addr in (data[0].paddr, data[0].end - 1, m.boot.layout.start_info, e.rsp - 8,
                     m.memory.size - 4096, 0x4000_0000):
            assert translate(m.memory, paging, addr, write=True) == addr
            with pytest.raises(GuestFault) as fault:
                translate(m.memory, paging, addr, fetch=True)
            assert fault.value.error_code == 0b10001         # present, instruction fetch
    finally:
        m.close()


def test_initrd_is_a_module(tmp_path):
    initrd = tmp_path / "initrd"
    initrd.write_bytes(b"module bytes" * 1000)
    m, _ = boot_pv(initrd=str(initrd))
    try:
        si = abi.start_info.unpack(m.memory.read(m.boot.layout.start_info, abi.start_info.size))
        assert si["mod_len"] == 12000
        assert m.memory.read(si["mod_start"], 12000) == initrd.read_bytes()
        assert si["mod_start"] % 4096 == 0 and si["mod_start"] >= m.boot.kernel.load_end
    finally:
        m.close()


def test_kernel_without_xen_notes_is_refused():
    with pytest.raises(BadImageError, match="no Xen ELF notes"):
        Machine(VmConfig(kernel=HELLO, pv=True))


def test_cli_boot_pv():
    r = subprocess.run([sys.executable, "-m", "pyvmm.cli", "boot", "--pv", "guests/build/pvguest.elf"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pvguest: hello through the console ring" in r.stdout
    assert "timer: 5 upcalls on VIRQ_TIMER while blocked" in r.stdout
    assert r.stdout.rstrip().endswith("pvguest: 21/21 checks passed")


def test_cli_boot_pv_refuses_a_non_pv_kernel():
    r = subprocess.run([sys.executable, "-m", "pyvmm.cli", "boot", "--pv", "guests/build/hello.elf"],
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert r.returncode == 2
    assert "hello.elf: no Xen ELF notes" in r.stderr
