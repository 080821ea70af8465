"""VM snapshots: a whole paused VM as one migration stream in a file, and back.

Responsibility: the snapshot layout on top of pyvmm.migrate.stream (specified in
docs/migration-stream.md, section "VM snapshot"): which records a snapshot holds, in
which order, and what their state maps must contain; checking a read snapshot as a
whole; and putting RAM and device state back into a freshly built VM. It does not
know how a component builds its state: the VMM hands in plain values (``save()`` of
each component) and gets the same values back.

Layout (all in one stream of the current version): the ``snapshot/config`` DEVICE record first
(snapshot format, VM config, RAM size); then DISK records (one per attachment), VIF
records (one per network interface), VCPU
records, MEMORY records with every page that is not all zeros (a page no entry names
is zero), one DEVICE record per device (blob: one state value, a map), GRANT_TABLE
and EVENT_CHANNELS records of a PV guest's domain, at most one XENSTORE record (that
domain's xenstore home), and END. A PV guest's own platform state is the ``pv`` device.

Invariants:
- ``read_snapshot`` reads and checks the whole stream (framing, CRC chain, the config
  and every record against it: pages inside RAM, unique names and ids, device blobs
  that decode to maps) before it returns anything, so a truncated, corrupted,
  foreign or newer file is refused with MigrationStreamError and nothing is restored;
- ``save_file`` never leaves a half-written file under the target name: it writes a
  temporary file next to it and renames it into place only when the END record and
  an fsync are done;
- ``restore_devices`` changes either every device or none: the devices' states before
  the call are taken first and put back if any restore refuses its state.
"""

import os
import tempfile
from dataclasses import dataclass, field

from pyvmm.devices.block.vbd import check_disk_state
from pyvmm.devices.net.vif import check_vif_state
from pyvmm.errors import MigrationError, MigrationStreamError
from pyvmm.migrate.dirty_scan import DirtyScanner
from pyvmm.migrate.state import StateFields
from pyvmm.migrate.stream import (DeviceRecord, DiskRecord, EventChannelsRecord, GrantTableRecord,
                                  MemoryRecord, PageEncoding, VcpuRecord, VifRecord, XenstoreNode,
                                  XenstoreRecord, decode_value, encode_value, read_stream,
                                  write_stream)
from pyvmm.mm.layout import PAGE_SIZE

SNAPSHOT_FORMAT = 4              # the layout above; a reader refuses a newer one (2: "pv" in the config,
                                 # 3: DISK records carry the attachment's backend, 4: VIF records:
                                 # docs/migration-stream.md)
CONFIG = "snapshot/config"       # the DEVICE record that opens a snapshot
CONFIG_FIELDS = ("kernel", "initrd", "cmdline", "mmu", "exception_bitmap", "rdtsc_exiting", "pv")
PV_STATE_KEYS = ("platform", "grant_table", "event_channels", "xenstore")
BATCH_PAGES = 512                # pages a MEMORY record carries (2 MiB of raw pages at most)
MAX_RAM = 1 << 40
RESERVED_PREFIXES = ("snapshot/", "migration/")


@dataclass
class Snapshot:
    """A VM as a snapshot carries it. Written from ``memory`` (guest RAM, a buffer of
    ``ram_size`` bytes); read back with ``pages`` (pfn -> the 4 KiB of every page
    that is not all zeros) instead."""

    config: dict                                    # CONFIG_FIELDS: kernel, initrd, cmdline, ...
    ram_size: int
    vcpus: dict                                     # vcpu id -> Vcpu.save()
    devices: dict                                   # device name -> device.save()
    disks: list = field(default_factory=list)       # Vbd.save() each: path, format, readonly, devid, sectors, backend
    vifs: list = field(default_factory=list)        # Vif.save() each: kind, switch, local, remote, mac, devid, backend
    grant_tables: dict = field(default_factory=dict)     # domid -> GrantTable.save()
    event_channels: dict = field(default_factory=dict)   # domid -> EventChannels.save()
    xenstore: list = None                           # Xenstore.save(): (path, value, perms) list
    memory: object = None                           # writing: guest RAM
    pages: dict = None                              # read back: pfn -> bytes


# --- writing ----------------------------------------------------------------------

def _memory_records(memory, ram_size, scanner=None):
    """MEMORY records of the RAW pages of RAM that are not all zeros (the C zero-page
    check finds them), BATCH_PAGES a record."""
    ram = memoryview(memory).cast("B")
    if len(ram) != ram_size:
        raise MigrationError(f"snapshot: RAM buffer of {len(ram)} bytes, config says {ram_size}")
    scanner = scanner or DirtyScanner()
    pfns = scanner.nonzero_pages(ram)
    for i in range(0, len(pfns), BATCH_PAGES):
        batch = pfns[i:i + BATCH_PAGES]
        yield MemoryRecord.batch(batch, *scanner.gather_pages(ram, batch))


def snapshot_records(snap):
    """The records of ``snap`` in snapshot order (without END)."""
    check_config(snap.config, snap.ram_size)
    yield DeviceRecord(CONFIG, bytes(encode_value({"format": SNAPSHOT_FORMAT, "ram_size": snap.ram_size,
                                                   **snap.config})))
    for disk in snap.disks:
        check_disk(disk)
        yield DiskRecord(disk)
    for vif in snap.vifs:
        check_vif(vif)
        yield VifRecord(vif)
    if not snap.vcpus:
        raise MigrationError("snapshot: a VM needs at least one vCPU state")
    for vcpu_id, state in sorted(snap.vcpus.items()):
        yield VcpuRecord(vcpu_id, state)
    yield from _memory_records(snap.memory, snap.ram_size)
    for name, state in snap.devices.items():
        if name.startswith(RESERVED_PREFIXES):
            raise MigrationError(f"snapshot: device name {name!r} uses a reserved prefix")
        yield DeviceRecord(name, bytes(encode_value(state)))
    for domid, state in sorted(snap.grant_tables.items()):
        yield GrantTableRecord(domid, state)
    for domid, state in sorted(snap.event_channels.items()):
        yield EventChannelsRecord(domid, state)
    if snap.xenstore is not None:
        yield XenstoreRecord(tuple(XenstoreNode(path, value, perms)
                                   for path, value, perms in snap.xenstore))


def write_snapshot(out, snap):
    """Write ``snap`` (with ``memory`` set) to ``out`` (a file or socket); returns the
    number of records written, END included."""
    return write_stream(out, snapshot_records(snap))


def save_file(path, snap):
    """Write ``snap`` to ``path`` atomically: the file appears whole or not at all."""
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".partial",
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "wb") as out:
            records = write_snapshot(out, snap)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return records


# --- reading and checking -----------------------------------------------------------

def check_config(config, ram_size, where="snapshot"):
    """Refuse a config map without the fields a VM is built from, or with bad ones."""
    f = StateFields(config, f"{where} config")
    f.text("kernel")
    if f.raw("initrd") is not None:
        f.text("initrd")
    f.text("cmdline", max_len=1 << 16)
    f.text("mmu", max_len=16)
    f.uint("exception_bitmap", 1 << 32)
    f.flag("rdtsc_exiting")
    f.flag("pv")
    f.done()
    if isinstance(ram_size, bool) or not isinstance(ram_size, int) or not 0 < ram_size <= MAX_RAM \
            or ram_size % PAGE_SIZE:
        raise MigrationStreamError(f"{where} config: RAM size {ram_size!r} is not a positive "
                                   f"multiple of {PAGE_SIZE} up to {MAX_RAM}")


def check_disk(disk, where="snapshot"):
    """A DISK record's state map (devices/block/vbd.py: path, format, readonly, devid,
    sectors, backend); the backend's map is checked when it is restored."""
    check_disk_state(disk, where)


def check_vif(vif, where="snapshot"):
    """A VIF record's state map (devices/net/vif.py: kind, switch, local, remote, mac,
    devid, backend); the backend's map is checked when it is restored."""
    check_vif_state(vif, where)


def _read_config(record, where, disk_records=False, vif_records=False):
    if not isinstance(record, DeviceRecord) or record.name != CONFIG:
        what = record.name if isinstance(record, DeviceRecord) else type(record).__name__
        raise MigrationStreamError(f"{where}: not a VM snapshot (the first record is {what}, "
                                   f"expected {CONFIG})")
    config = _decode(record, where)
    f = StateFields(config, f"{where}: {CONFIG}")
    version = f.uint("format", 1 << 32)
    if version > SNAPSHOT_FORMAT:
        raise MigrationStreamError(f"{where}: snapshot format {version} is newer than this pyvmm "
                                   f"reads (up to {SNAPSHOT_FORMAT})")
    if version < 1:
        raise MigrationStreamError(f"{where}: snapshot format {version} does not exist")
    ram_size = f.raw("ram_size")
    rest = {k: v for k, v in config.items() if k not in ("format", "ram_size")}
    if version < 3 and disk_records:  # formats 1 and 2 never held a disk (their saves refused one)
        raise MigrationStreamError(f"{where}: snapshot format {version} with DISK records")
    if version < 4 and vif_records:   # nor formats 1 to 3 a vif
        raise MigrationStreamError(f"{where}: snapshot format {version} with VIF records")
    if version == 1:                  # format 1 had no PV guests
        if "pv" in rest:
            raise MigrationStreamError(f"{where}: snapshot format 1 with a 'pv' config field")
        rest["pv"] = False
    check_config(rest, ram_size, where)
    return rest, ram_size


def _decode(record, where):
    try:
        return decode_value(record.blob)
    except MigrationStreamError as e:
        raise MigrationStreamError(f"{where}: {record.name}: {e}") from None


def _unique(table, key, what, where):
    if key in table:
        raise MigrationStreamError(f"{where}: {what} appears twice")


def _take_pages(record, pages, ram_size, where):
    limit = ram_size // PAGE_SIZE
    for pfn, encoding, data in record.entries():
        if encoding != PageEncoding.RAW:
            raise MigrationStreamError(f"{where}: page {pfn:#x} is {PageEncoding(encoding).name}; a "
                                       f"snapshot carries RAW pages only")
        if pfn >= limit:
            raise MigrationStreamError(f"{where}: page {pfn:#x} is outside the "
                                       f"{ram_size}-byte RAM")
        _unique(pages, pfn, f"page {pfn:#x}", where)
        pages[pfn] = data


def read_snapshot(src, name="snapshot"):
    """The Snapshot in ``src`` (a file object or socket), checked in full first."""
    records = read_stream(src, name)
    if not records:
        raise MigrationStreamError(f"{name}: not a VM snapshot (no records before END)")
    config, ram_size = _read_config(records[0], name, any(isinstance(r, DiskRecord) for r in records),
                                    any(isinstance(r, VifRecord) for r in records))
    snap = Snapshot(config=config, ram_size=ram_size, vcpus={}, devices={}, pages={})
    for index, record in enumerate(records[1:], 1):
        where = f"{name}: record {index}"
        if isinstance(record, MemoryRecord):
            _take_pages(record, snap.pages, ram_size, where)
        elif isinstance(record, VcpuRecord):
            _unique(snap.vcpus, record.vcpu_id, f"vCPU {record.vcpu_id}", where)
            snap.vcpus[record.vcpu_id] = record.state
        elif isinstance(record, DiskRecord):
            check_disk(record.state, where)
            snap.disks.append(record.state)
        elif isinstance(record, VifRecord):
            check_vif(record.state, where)
            snap.vifs.append(record.state)
        elif isinstance(record, DeviceRecord):
            if record.name.startswith(RESERVED_PREFIXES):
                raise MigrationStreamError(f"{where}: {record.name} does not belong in a snapshot")
            _unique(snap.devices, record.name, f"device {record.name!r}", where)
            state = _decode(record, where)
            if not isinstance(state, dict):
                raise MigrationStreamError(f"{where}: device {record.name!r} state is a "
                                           f"{type(state).__name__}, expected a map")
            snap.devices[record.name] = state
        elif isinstance(record, GrantTableRecord):
            _unique(snap.grant_tables, record.domid, f"grant table of domain {record.domid}", where)
            snap.grant_tables[record.domid] = record.state
        elif isinstance(record, EventChannelsRecord):
            _unique(snap.event_channels, record.domid,
                    f"event channels of domain {record.domid}", where)
            snap.event_channels[record.domid] = record.state
        elif isinstance(record, XenstoreRecord):
            if snap.xenstore is not None:
                raise MigrationStreamError(f"{where}: a second XENSTORE record")
            snap.xenstore = [(n.path, n.value, n.perms) for n in record.nodes]
    if not snap.vcpus:
        raise MigrationStreamError(f"{name}: the snapshot holds no vCPU state")
    return snap


def load_file(path):
    """The Snapshot in the file at ``path``, checked in full (see read_snapshot)."""
    try:
        with open(path, "rb") as src:
            return read_snapshot(src, str(path))
    except OSError as e:
        raise MigrationError(f"snapshot {path}: {e.strerror or e}") from None


# --- putting a VM back ---------------------------------------------------------------

def save_devices(devices):
    """{name: device.save()} for a {name: device} map."""
    return {name: device.save() for name, device in devices.items()}


def restore_devices(devices, states, where="snapshot"):
    """Restore every device of ``devices`` ({name: device}) from ``states`` ({name: state});
    the names must match exactly. All or nothing: on a refusal every device already
    restored gets its previous state back and the error is raised."""
    missing = sorted(set(devices) - set(states))
    extra = sorted(set(states) - set(devices))
    if missing or extra:
        raise MigrationStreamError(f"{where}: device states do not match this VM's devices "
                                   f"(missing {missing}, unknown {extra})")
    before = save_devices(devices)
    done = []
    try:
        for name, device in devices.items():
            device.restore(states[name])
            done.append(name)
    except Exception:
        for name in done:
            devices[name].restore(before[name])
        raise


def zero_memory(memory, keep=()):
    """Zero every page of guest RAM (a GuestMemory) that holds data, except the pages
    in ``keep``: only those are written (writing all of RAM would touch every page)."""
    zero = bytes(PAGE_SIZE)
    for pfn in DirtyScanner().nonzero_pages(memory):
        if pfn not in keep:
            memory.write(pfn * PAGE_SIZE, zero)


def restore_memory(memory, snap):
    """Make guest RAM (a GuestMemory of the snapshot's size) hold the snapshot's pages,
    zeros everywhere else."""
    if memory.size != snap.ram_size:
        raise MigrationError(f"snapshot RAM is {snap.ram_size} bytes, the VM has {memory.size}")
    zero_memory(memory, keep=snap.pages)
    for pfn, data in snap.pages.items():
        memory.write(pfn * PAGE_SIZE, data)


def check_pv_state(state, where="snapshot"):
    """A PV guest's state map (Machine.save_state()["pv"]): exactly PV_STATE_KEYS, the
    first three maps and ``xenstore`` a list of [path, value, permissions] nodes (each
    part is checked in full by the component that restores it)."""
    f = StateFields(state, f"{where}: PV state")
    for key in PV_STATE_KEYS[:3]:
        if not isinstance(f.raw(key), dict):
            f.fail(key, f"a {type(state[key]).__name__}, expected a map")
    f.items("xenstore", 1 << 20)
    f.done()
    return state


__all__ = ["Snapshot", "XenstoreNode", "write_snapshot", "read_snapshot", "save_file", "load_file",
           "save_devices", "restore_devices", "restore_memory", "zero_memory", "check_pv_state",
           "check_config", "check_disk", "check_vif", "SNAPSHOT_FORMAT"]
