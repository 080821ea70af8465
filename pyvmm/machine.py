"""Machine: builds a VM from a VmConfig and runs it.

A Machine owns guest RAM, the CPU engine, the platform devices (UART, PIC, PIT,
CMOS, power) on an I/O bus, and one Vcpu. From Python:

    m = Machine(VmConfig(kernel="guests/build/hello.elf"))
    m.set_handler(ExitReason.CPUID, my_cpuid)      # a student's handler
    for ex in m.exits():                           # one exit at a time
        ...
    status, reason = m.result

or simply ``status, reason = m.run()``.
"""

import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Optional

from pyvmm.boot.loader import load_kernel
from pyvmm.boot.pvboot import load_pv_kernel
from pyvmm.cpu import _unicorn
from pyvmm.cpu.cpuid import CpuidPolicy, version_word
from pyvmm.cpu.msr import MsrTable
from pyvmm.cpu.state import CR0_PG, EFER_LMA, EFER_LME
from pyvmm.cpu.svm import VMEXIT_HLT, VMEXIT_INVLPG, VMEXIT_MSR, VMEXIT_SHUTDOWN, VMEXIT_VMMCALL, VMEXIT_VMRUN, \
    VMEXIT_WBINVD, intercept_bit
from pyvmm.cpu.vcpu import Vcpu
from pyvmm.cpu.vmcs import VmcsControls
from pyvmm.devices.backend import close_all
from pyvmm.devices.block.vbd import attach_vbds, open_disks, restore_vbds
from pyvmm.devices.bus import IoBus
from pyvmm.devices.cmos import Mc146818
from pyvmm.devices.i8042 import I8042
from pyvmm.devices.net.hostnet import HostNetwork
from pyvmm.devices.net.vif import attach_vifs, check_vif_state, restore_vifs
from pyvmm.devices.irq import IrqLine
from pyvmm.devices.pic import PicPair
from pyvmm.devices.pit import I8254
from pyvmm.devices.power import PowerControl
from pyvmm.devices.serial import Serial16550
from pyvmm.devices.sysctl import SystemControlB
from pyvmm.cpu.vcpu import check_vcpu_state
from pyvmm.errors import ConfigError, MigrationStreamError, PyvmmError
from pyvmm.migrate import snapshot
from pyvmm.mm.dirty_log import DirtyLog
from pyvmm.mm.ept import EptMmu, EptTable
from pyvmm.mm.shadow import ShadowMmu, ShadowUnsupported
from pyvmm.mm.layout import PAGE_SIZE
from pyvmm.mm.memory import GuestMemory, parse_size
from pyvmm.pv.hypercall import Hypercalls
from pyvmm.pv.pv_platform import PvPlatform

ALL_EXCEPTIONS = 0xFFFFFFFF
SHADOW_MIN_POOL_PAGES = 2048     # 8 MiB of shadow tables at least; more for big guests (RAM / 8)
MMU_MODES = ("ept", "shadow", "direct")
PV_DEVICE = "pv"                 # a PV guest's PvPlatform.save() in a snapshot (docs/migration-stream.md)


@dataclass
class VmConfig:
    kernel: str
    initrd: Optional[str] = None
    cmdline: str = ""
    memory: str = "64M"
    exception_bitmap: int = 0
    rdtsc_exiting: bool = False
    # How guest memory is virtualized: "ept" (the VMM's EPT-style table walked after
    # the guest's own; CR3 loads and INVLPG do not exit), "shadow" (the VMM's shadow
    # tables built from the guest's: CR3 loads/reads, INVLPG, #PF and writes to guest
    # page tables exit) or "direct" (no second level: the guest's tables are the
    # engine's; CR3 loads and INVLPG exit; guest memory is not isolated from the VMM's).
    mmu: str = "ept"
    # Where a bzImage's compressed kernel is decompressed: "host" (pyvmm does it and
    # enters the kernel proper at startup_64; boot/payload.py says why) or "guest"
    # (the kernel's own decompressor runs in the guest, as on a PC).
    decompress: str = "host"
    console: object = None          # callable(bytes); default: stdout
    stdin: bool = False             # feed the host's stdin to COM1
    # Boot the kernel the Xen PV way (boot/pvboot.py, docs/pv-boot.md): Xen ELF notes,
    # start_info, console and xenstore rings served by domain 0, event-channel upcalls.
    pv: bool = False
    # Disks for a PV guest's blkfront (devices/block/vbd.py): "FILE[,format=raw|qcow2][,readonly]"
    # strings or DiskSpecs, served as xvda, xvdb ... by a blkback each in domain 0.
    disks: list = field(default_factory=list)
    # Network interfaces for a PV guest's netfront (devices/net/vif.py): "switch=NAME[,mac=M]"
    # or "udp,local=HOST:PORT,remote=HOST:PORT[,mac=M]" strings or NetSpecs, vif 0, 1 ...
    nets: list = field(default_factory=list)
    extra: dict = field(default_factory=dict)


class Platform:
    """The PC devices a guest sees, on one I/O bus (docs/platform.md)."""

    def __init__(self, ram_size, console, on_power, clock=time.monotonic_ns):
        self.io = IoBus()
        self.pic = PicPair()
        self.pit = I8254(clock, irq=IrqLine(self.pic, 0))
        self.serial = Serial16550(console, irq=IrqLine(self.pic, 4))
        self.cmos = Mc146818(time.time, ram_size)
        self.power = PowerControl(on_power)
        self.sysctl = SystemControlB(self.pit)
        self.i8042 = I8042(IrqLine(self.pic, 1), IrqLine(self.pic, 12), on_power)
        for dev in (self.pic, self.pit, self.serial, self.cmos, self.power, self.sysctl, self.i8042):
            self.io.register(dev)
        self._wake = threading.Event()
        self.input_attached = False
        self.network = None             # a HostNetwork when the guest has vifs: polled and waited on
        # Ports whose writes can move the next timer deadline (the vCPU re-arms its
        # host timer after them).
        self.timer_ports = frozenset(self.pit.ports) | frozenset(self.sysctl.ports)

    def tick(self, now):
        self.pit.advance(now)
        if self.network is not None:
            self.network.poll()          # frames from other processes, between guest slices

    def next_deadline(self, now):
        return self.pit.next_deadline_ns(now)

    def can_wake(self):
        return self.input_attached or (self.network is not None and self.network.can_wake)

    def wait(self, seconds):
        if self.network is not None and self.network.can_wake:
            self.network.wait(seconds)   # a datagram for a vif ends the wait too
        else:
            self._wake.wait(seconds)
        self._wake.clear()

    def wake(self):
        """End a wait() early (a pause request for a halted vCPU)."""
        self._wake.set()
        if self.network is not None:
            self.network.wake()

    def devices(self):
        """{name: device} of the devices whose state a snapshot carries (names of
        docs/migration-stream.md, "VM snapshot")."""
        return {"pic": self.pic, "pit": self.pit, "serial": self.serial, "cmos": self.cmos,
                "power": self.power, "sysctl": self.sysctl, "i8042": self.i8042}

    def feed_input(self, data):
        self.serial.feed(data)
        self.wake()


class Machine:
    def __init__(self, config, *, dom0=None, domid=1, name=None, network=None):
        """``dom0`` (a pv.dom0.Dom0), ``domid`` and ``name``: where a --pv guest joins a
        host of several domains (pv/hypervisor.py); alone it gets its own domain 0.
        ``network`` (a HostNetwork) is the process's switches and endpoints its vifs
        join; alone it gets its own, closed with it."""
        self.config = config
        self.vbds = []
        self.vifs = []
        self._own_network = None
        if config.disks and not config.pv:
            raise ConfigError("--disk needs --pv: disks are served to a PV guest's blkfront")
        if config.nets and not config.pv:
            raise ConfigError("--net needs --pv: vifs are served to a PV guest's netfront")
        self.memory = GuestMemory(parse_size(config.memory))
        if config.pv:
            self.boot = load_pv_kernel(config.kernel, self.memory, initrd=config.initrd, cmdline=config.cmdline)
        else:
            self.boot = load_kernel(config.kernel, self.memory, initrd=config.initrd, cmdline=config.cmdline,
                                    decompress=config.decompress)
        console = config.console or _stdout_console
        self.console = console
        self.platform = Platform(self.memory.size, console, self._on_power)
        if config.mmu not in MMU_MODES:
            raise ConfigError(f"unknown MMU mode {config.mmu!r} (choose from {', '.join(MMU_MODES)})")
        mmu = None
        if config.mmu == "ept":
            pool = EptTable.pool_pages_for(self.memory.size) * PAGE_SIZE
            self.engine = _unicorn.Engine(self.memory, nested_pool_size=pool)
            mmu = EptMmu(EptTable(self.engine.nested_pool, self.engine.nested_pool_base), self.memory.size)
        elif config.mmu == "shadow":
            pages = max(SHADOW_MIN_POOL_PAGES, self.memory.size // PAGE_SIZE // 8)
            self.engine = _unicorn.Engine(self.memory, nested_pool_size=pages * PAGE_SIZE)
            mmu = ShadowMmu(self.engine.nested_pool, self.engine.nested_pool_base, self.memory.size)
            e = self.boot.entry
            try:
                mmu.check_paging(e.cr0, e.cr4, e.efer | EFER_LMA if e.efer & EFER_LME and e.cr0 & CR0_PG else e.efer)
            except ShadowUnsupported as err:
                self.engine.close()
                raise ConfigError(f"{config.kernel}: {err}") from None
        else:
            self.engine = _unicorn.Engine(self.memory)
        self.mmu = mmu
        controls = VmcsControls(exception_bitmap=config.exception_bitmap, rdtsc_exiting=config.rdtsc_exiting)
        self.vcpu = Vcpu(self.engine, self.memory, self.platform, CpuidPolicy(_unicorn.native_cpuid, _unicorn.native_cpuid_leaves()), MsrTable(),
                         Hypercalls(version_word()), controls, console)
        self.vcpu.halt_is_poweroff = self.boot.kernel.kind == "bzimage"
        self.vcpu.set_mmu(mmu)
        self.pv = None
        if config.pv:
            # Domain 0 and the guest's domain; RDTSC exits so that vcpu_time_info is exact.
            name = name or os.path.splitext(os.path.basename(config.kernel))[0]
            self.pv = PvPlatform(self.memory, self.boot, console, name=name, tsc=self.vcpu.guest_tsc,
                                 dom0=dom0, domid=domid)
            self.vcpu.set_pv(self.pv, hypercall_page=self.boot.notes.hypercall_page)
            if config.disks:
                try:
                    self.vbds = attach_vbds(self.pv, open_disks(config.disks))
                except BaseException:
                    self.close()
                    raise
            if config.nets:
                if network is None:
                    network = self._own_network = HostNetwork()
                self.platform.network = network
                try:
                    self.vifs = attach_vifs(self.pv, config.nets, network)
                except BaseException:
                    self.close()
                    raise
        if config.rdtsc_exiting or config.pv:
            self.engine.set_rdtsc_exiting(True)
        self.engine.enter(self._guest_entry())
        self.result = None
        if config.stdin:
            self._start_stdin()

    # ---- the dirty log (EPT mode); call while the guest is not running ----
    def start_dirty_log(self):
        """Start logging which guest pages are written (one exit per page per round)."""
        if self.mmu is None:
            raise ConfigError("the dirty log needs --mmu ept or --mmu shadow")
        if self.mmu.start_dirty_log(DirtyLog(self.memory.size)):
            self.engine.flush_tlb()

    def read_dirty_log(self):
        """Bitmap of the pages written since the last read (bit n = page n); re-armed."""
        if self.mmu is None or self.mmu.dirty_log is None:
            raise ConfigError("the dirty log was not started")
        bitmap, flush = self.mmu.read_dirty_log()
        if flush:
            self.engine.flush_tlb()
        if self.pv is not None:        # what domain 0 wrote into the guest: no write exit showed it
            bits = bytearray(bitmap)
            for gfn in self.pv.host_written_frames():
                bits[gfn >> 3] |= 1 << (gfn & 7)
            bitmap = bytes(bits)
        return bitmap

    def stop_dirty_log(self):
        """Stop logging writes (pages become writable without exits again)."""
        if self.mmu is not None and self.mmu.dirty_log is not None:
            self.mmu.stop_dirty_log()
            self.engine.flush_tlb()

    def _guest_entry(self):
        return guest_entry(self.boot.entry, self.mmu)

    def _on_power(self, event):

        self.vcpu.request_stop(event.status if event.kind != "poweroff" else 0, event.reason)

    def _start_stdin(self):
        self.platform.input_attached = True

        def reader():
            while True:
                data = sys.stdin.buffer.read1(64) if hasattr(sys.stdin.buffer, "read1") else sys.stdin.buffer.read(1)
                if not data:
                    return
                self.platform.feed_input(data)

        threading.Thread(target=reader, name="pyvmm-stdin", daemon=True).start()

    # ---- the user's view ----
    def set_handler(self, reason, handler):
        """Replace the default handler for an exit reason (e.g. a student's CPUID)."""
        self.vcpu.handlers[reason] = handler

    def add_observer(self, fn):
        """fn(vcpu, exit, outcome, ns) after every exit (trace, stats, stepping)."""
        self.vcpu.observers.append(fn)

    def run(self):
        """Run the guest until it stops (returns and closes the VM: ``(status,
        reason)``) or is paused (``vcpu.request_pause()``: returns None and the VM
        stays open for save() or another run())."""
        try:
            result = self.vcpu.run()
        except BaseException:
            self.close()
            raise
        if self.vcpu.paused:
            return None
        self.result = result
        self.close()
        return self.result

    # ---- snapshots (pyvmm/migrate/snapshot.py) and migration ----
    def _check_saveable(self):
        if self.engine.uc is None:
            raise ConfigError("cannot save a VM that has already stopped")
        if self.vcpu._started and not self.vcpu.paused:
            raise ConfigError("cannot save a running VM: pause it first (vcpu.request_pause())")

    def snapshot_config(self):
        """What a VM is rebuilt from (snapshot.CONFIG_FIELDS), as plain values."""
        c = self.config
        return {"kernel": os.path.abspath(c.kernel), "initrd": c.initrd and os.path.abspath(c.initrd),
                "cmdline": c.cmdline, "mmu": c.mmu, "exception_bitmap": c.exception_bitmap,
                "rdtsc_exiting": c.rdtsc_exiting, "pv": c.pv}

    def drain_backends(self):
        """Serve the requests already on the disks' and vifs' rings (the VM is paused):
        their writes into guest RAM happen now, before the last dirty log is read (a
        vif's frames leave now too)."""
        for vbd in self.vbds:
            vbd.blkback.process()
        for vif in self.vifs:
            vif.netback.process()

    def release_backends(self):
        """After the device state went to a live migration's destination: close the
        disks' images (flushed) and let go of UDP vifs' local addresses, which the
        destination opens and binds next."""
        for vbd in self.vbds:
            vbd.release()
        for vif in self.vifs:
            vif.release()

    def reclaim_backends(self):
        """Undo release_backends (the migration failed; the VM runs on here): the images
        are opened again (an error raises), the vifs' addresses bound again. Returns
        what could not be bound (the vif then drops its frames) as messages."""
        for vbd in self.vbds:
            vbd.reclaim()
        problems = []
        for vif in self.vifs:
            try:
                vif.reclaim()
            except PyvmmError as err:
                problems.append(str(err))
        return problems

    def save_state(self):
        """The paused VM's state apart from RAM, as plain values (live migration's
        device map): {"vcpu": Vcpu.save(), "devices": {name: device.save()}}, and for a
        PV guest "pv": {"platform", "grant_table", "event_channels", "xenstore"}
        (PvPlatform.save() and save_domain()), "disks" (Vbd.save() each: their
        requests served first, the images flushed) and "vifs" (Vif.save() each: the tx
        requests on their rings served first)."""
        self._check_saveable()
        disks = [vbd.save() for vbd in self.vbds]
        vifs = [vif.save() for vif in self.vifs]
        state = {"vcpu": self.vcpu.save(), "devices": snapshot.save_devices(self.platform.devices())}
        if self.pv is not None:
            state["disks"] = disks
            state["vifs"] = vifs
            grants, channels, nodes = self.pv.save_domain()
            state["pv"] = {"platform": self.pv.save(), "grant_table": grants, "event_channels": channels,
                           "xenstore": [list(node) for node in nodes]}
        return state

    def snapshot(self):
        """The paused VM as a Snapshot (memory is guest RAM itself: write it before
        the guest runs again)."""
        state = self.save_state()
        snap = snapshot.Snapshot(config=self.snapshot_config(), ram_size=self.memory.size,
                                 vcpus={0: state["vcpu"]}, devices=state["devices"], memory=self.memory.view)
        pv = state.get("pv")
        if pv is not None:
            domid = self.pv.guest.domid
            snap.devices[PV_DEVICE] = pv["platform"]
            snap.grant_tables = {domid: pv["grant_table"]}
            snap.event_channels = {domid: pv["event_channels"]}
            snap.xenstore = [tuple(node) for node in pv["xenstore"]]
            snap.disks = state["disks"]
            snap.vifs = state["vifs"]
        return snap

    def save(self, path):
        """Write the paused VM to ``path`` (atomically); returns the file's size in bytes."""
        snapshot.save_file(path, self.snapshot())
        return os.path.getsize(path)

    @classmethod
    def restore(cls, path, console=None, stdin=False):
        """A new Machine running on from the snapshot in ``path``. The file is read and
        checked in full before anything is built; a refused file raises
        MigrationStreamError / MigrationError and builds nothing."""
        return cls.from_snapshot(snapshot.load_file(path), console=console, stdin=stdin)

    @classmethod
    def from_snapshot(cls, snap, console=None, stdin=False):
        if sorted(snap.vcpus) != [0]:
            raise MigrationStreamError(f"snapshot: vCPU ids {sorted(snap.vcpus)}; this VMM runs one vCPU (id 0)")
        devices, pv = dict(snap.devices), None
        if snap.config.get("pv"):
            domids = sorted(set(snap.grant_tables) | set(snap.event_channels))
            if PV_DEVICE not in devices or len(domids) != 1 or snap.xenstore is None \
                    or set(snap.grant_tables) != set(snap.event_channels):
                raise MigrationStreamError(f"snapshot of a PV guest: needs the {PV_DEVICE!r} device, one "
                                           f"domain's grant table and event channels (domains {domids}) "
                                           f"and the XENSTORE record")
            pv = {"platform": devices.pop(PV_DEVICE), "grant_table": snap.grant_tables[domids[0]],
                  "event_channels": snap.event_channels[domids[0]], "xenstore": snap.xenstore}
        elif snap.grant_tables or snap.event_channels or snap.xenstore is not None or snap.disks or snap.vifs:
            raise MigrationStreamError("snapshot: carries PV (grant/event channel/xenstore/disk/vif) state, but "
                                       "its config is not a PV guest's")
        machine = cls._build(snap.config, snap.ram_size, console, stdin)
        try:
            snapshot.restore_memory(machine.memory, snap)
            machine._restore_state(snap.vcpus[0], devices, pv, snap.disks, snap.vifs)
        except BaseException:
            machine.close()
            raise
        return machine

    # ---- live migration, destination side ----
    @classmethod
    def receive_migration(cls, where, console=None, stdin=False, **receive_args):
        """Take one VM live-migrating in at ``where`` (pyvmm.migrate.receiver.receive's
        first argument; ``receive_args`` are its keywords): the Machine is built when the
        stream's begin record brings the config, the pages are written straight into its
        RAM, and only devices and vCPU are put in at the end. Returns (machine, the
        receiver's stats); on any failure the half-built Machine is closed and the
        receiver's MigrationError / MigrationStreamError is raised."""
        from pyvmm.migrate.receiver import receive
        built = []

        def prepare(config, ram_size):
            built.append(cls.for_migration(dict(config, ram_size=ram_size), console, stdin))
            return built[0].memory.view

        def discard():
            built.pop().close()

        stats = receive(where, lambda config, ram, state: built[0].finish_migration(state),
                        prepare=prepare, discard=discard, **receive_args)
        return built[0], stats

    @classmethod
    def for_migration(cls, config, console=None, stdin=False):
        """A Machine for a VM migrating in, from the source's snapshot_config() plus
        "ram_size": its RAM is all zeros, for the incoming pages to be written into
        (``memory.view``); ``finish_migration(state)`` then puts the devices and the vCPU
        in. Until then it must not run."""
        config = dict(config) if isinstance(config, dict) else config
        if not isinstance(config, dict):
            raise MigrationStreamError(f"migration: the config is a {type(config).__name__}, expected a map")
        ram_size = config.pop("ram_size", None)
        machine = cls._build(config, ram_size, console, stdin, where="migration")
        try:
            snapshot.zero_memory(machine.memory)      # the loader wrote the kernel there
        except BaseException:
            machine.close()
            raise
        return machine

    def finish_migration(self, state):
        """Put the source's save_state() into a Machine from for_migration whose RAM now
        holds the guest's pages; the VM is then ready to run."""
        keys = {"vcpu", "devices"} | ({"pv", "disks", "vifs"} if self.pv is not None else set())
        if not isinstance(state, dict) or set(state) != keys or not isinstance(state["devices"], dict) \
                or not isinstance(state.get("disks", []), list) or not isinstance(state.get("vifs", []), list):
            raise MigrationStreamError(f"migration: the VM state must be a map with exactly "
                                       f"{sorted(keys)} (devices a map, disks and vifs lists)")
        self._restore_state(state["vcpu"], state["devices"], state.get("pv"), state.get("disks", []),
                            state.get("vifs", []), where="migration")

    @classmethod
    def _build(cls, c, ram_size, console, stdin, where="snapshot"):
        """A fresh Machine for a checked snapshot/migration config (snapshot.CONFIG_FIELDS)."""
        snapshot.check_config(c, ram_size, where)
        config = VmConfig(kernel=c["kernel"], initrd=c["initrd"], cmdline=c["cmdline"], memory=str(ram_size),
                          exception_bitmap=c["exception_bitmap"], rdtsc_exiting=c["rdtsc_exiting"], mmu=c["mmu"],
                          pv=c.get("pv", False), console=console, stdin=stdin)
        return cls(config)

    def _restore_state(self, vcpu_state, device_states, pv_state, disk_states=(), vif_states=(),
                       where="snapshot"):
        """Devices, PV platform, disks, vifs and vCPU of a freshly built Machine whose RAM
        holds the guest's pages; checked before they change (a refusal raises
        MigrationStreamError, or MigrationError for an image or address that cannot be
        had, and the caller closes the Machine, which closes what was opened or bound).
        The disks' images are opened and the vifs' UDP addresses bound here, once the
        source has let go of them (shared storage: the same path; one host: the same
        port); their backends are made before the guest's xenstore home comes back
        (unstarted, so its nodes fire none of their watches) and take up their
        connections after (a vif then announces its MAC)."""
        check_vcpu_state(vcpu_state)
        snapshot.restore_devices(self.platform.devices(), device_states)
        if self.pv is not None:
            pv = snapshot.check_pv_state(pv_state)
            for state in vif_states:        # every record checked before a disk is opened or a port bound
                check_vif_state(state, where)
            self.vbds = restore_vbds(self.pv, disk_states, where)
            if vif_states:
                self._own_network = self.platform.network = HostNetwork()
                self.vifs = restore_vifs(self.pv, vif_states, self._own_network, where)
            released = self.pv.restore(pv["platform"], pv["grant_table"], pv["event_channels"], pv["xenstore"])
            for vbd, state in zip(self.vbds, disk_states):
                vbd.restore(state, where)
            for vif, state in zip(self.vifs, vif_states):
                vif.restore(state, where)
            if released:
                self.vcpu.frames_removed(released)
        self.vcpu.restore(vcpu_state, entry_controls(self.mmu))
        if self.mmu is not None and self.mmu.mode == "shadow":
            self.mmu.reset("restored from a snapshot")
        self.engine.flush_translations()
        self.engine.flush_tlb()

    def exits(self):
        """Iterate over exits one at a time: the guest is suspended in the exit while
        the caller looks at it (registers, memory) and resumes at the next iteration."""
        handoff = queue.Queue(maxsize=1)
        resume = threading.Event()
        done = object()

        def observer(vcpu, ex, res, ns):
            handoff.put((ex, res))
            resume.wait()
            resume.clear()

        self.add_observer(observer)

        def runner():
            try:
                self.result = self.vcpu.run()
            finally:
                handoff.put(done)

        t = threading.Thread(target=runner, name="pyvmm-vcpu", daemon=True)
        t.start()
        try:
            while True:
                item = handoff.get()
                if item is done:
                    break
                yield item[0]
                resume.set()
        finally:
            if self.result is None:
                self.vcpu.request_stop(1, "stopped by the caller")
                resume.set()
            t.join(5)
            self.close()

    def close(self):
        if self.engine.uc is not None:
            self.vcpu.close()
            self.engine.close()
        vifs, self.vifs = self.vifs, []
        try:
            close_all(vifs)            # off their switches, backends stopped
        finally:
            if self._own_network is not None:
                self._own_network.close()
                self._own_network = None
            vbds, self.vbds = self.vbds, []
            close_all(vbds)            # backends stopped, images flushed and closed


def entry_controls(mmu=None):
    """The intercept controls of pyvmm's trap model for an MMU mode (see guest_entry):
    keyword arguments of GuestEntry / Engine.resume_state."""
    nested = mmu is not None and mmu.mode == "ept"
    shadow = mmu is not None and mmu.mode == "shadow"
    return dict(
        cr_read=(1 << 3) if shadow else 0,
        cr_write=(1 << 0) | (1 << 4) | (0 if nested else 1 << 3),
        exceptions=ALL_EXCEPTIONS,
        nested_cr3=mmu.nested_root if nested else None,
        intercepts=((0 if nested else intercept_bit(VMEXIT_INVLPG)) | intercept_bit(VMEXIT_HLT) | intercept_bit(VMEXIT_MSR)
                    | intercept_bit(VMEXIT_SHUTDOWN) | intercept_bit(VMEXIT_WBINVD)
                    | intercept_bit(VMEXIT_VMMCALL) | intercept_bit(VMEXIT_VMRUN)))


def guest_entry(e, mmu=None):
    """The VMRUN state for a loader's EntryState: the guest's first registers and
    the intercepts pyvmm's trap model needs (all exceptions, CR0/CR4 writes, HLT,
    MSRs, WBINVD, VMMCALL, shutdown; CR3 writes and INVLPG unless an EPT-style
    table is in use, as KVM does with EPT; with shadow tables also CR3 reads, and
    the engine's CR3 is the shadow root)."""
    shadow = mmu is not None and mmu.mode == "shadow"
    return _unicorn.GuestEntry(
        rip=e.rip, rsp=e.rsp, rflags=e.rflags, cr0=e.cr0, cr3=mmu.load_cr3(e.cr3) if shadow else e.cr3,
        cr4=e.cr4, efer=e.efer, gdt=(e.gdt_base, e.gdt_limit), idt=(e.idt_base, e.idt_limit),
        cs=(e.cs,) + tuple(e.code_segment), ds=(e.ds,) + tuple(e.data_segment),
        gprs={"rsi": e.rsi}, **entry_controls(mmu))


def _stdout_console(data):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()
