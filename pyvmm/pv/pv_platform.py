"""The paravirtual platform of one PV guest: domains, domain-0 backends, timer, upcalls.

Responsibility: what ``pyvmm boot --pv`` adds around the vCPU. It adds the guest
(domid 1 by default, over the machine's GuestMemory, its shared_info and grant-table
frames where boot/pvboot.py laid them out) to domain 0's DomainTable (a ``dom0.Dom0``
shared by every guest of the process, or its own when it runs alone); connects the guest's console and xenstore rings to
their domain-0 backends through event channels bound interdomain (the guest's ports
are allocated unbound for domain 0, domain 0 binds them with Python callbacks, as
Xen's toolstack and xenconsoled/xenstored do); writes start_info; and keeps the
per-vCPU state the hypercalls ask the vCPU for: the one-shot timer of
set_timer_op (VIRQ_TIMER at its deadline), SCHEDOP_block/SCHEDOP_poll sleeps, and
the vcpu_time_info the guest reads its clock from.

Upcall ABI (docs/pv-boot.md): the guest names an IDT vector with
HVMOP_set_param(HVM_PARAM_CALLBACK_IRQ, HVM_PARAM_CALLBACK_TYPE_VECTOR << 56 | vector);
while ``vcpu_info.evtchn_upcall_pending`` is set and ``evtchn_upcall_mask`` clear the
vCPU delivers that vector through the guest's IDT like an external interrupt, when
RFLAGS.IF allows (level-like, as Xen's callback vector: the guest's handler clears
``evtchn_upcall_pending`` before it scans the selector and pending words).

Invariants:
- system time is nanoseconds since the platform was built; vcpu_time_info says
  TSC = 2 x system time (tsc_to_system_mul 2**31, tsc_shift 0), which is exact
  because a PV vCPU's RDTSC exits and reads the VMM's 2 GHz TSC;
- vcpu_info.evtchn_upcall_mask starts at 1 (upcalls off) as on Xen; the guest
  clears it, or SCHEDOP_block does;
- a guest that breaks a ring protocol loses that backend only (``console.broken``,
  the xenstore connection's ``broken``); the VMM and domain 0 carry on.
"""

import re
import struct
import time

from pyvmm.boot.pvboot import write_start_info
from pyvmm.errors import EventChannelError, MigrationError, MigrationStreamError, XenstoreError
from pyvmm.migrate.state import StateFields
from pyvmm.pv import abi, pv_mmu
from pyvmm.pv.console import ConsoleBackend
from pyvmm.pv.dom0 import Dom0
from pyvmm.pv.domain import Domain
from pyvmm.pv.xenstore import Perm, domain_path
from pyvmm.pv.xs_wire import XENSTORE_PAYLOAD_MAX

GUEST_DOMID = 1
TSC_PER_NS = 2                             # the vCPU's TSC runs at 2 GHz (Vcpu.guest_tsc)
TSC_TO_SYSTEM_MUL = 1 << 31                # ns = (tsc_delta << 0) * 2**31 >> 32 = tsc_delta / 2
_TIME = abi.vcpu_info.offsetof("time")
_UPCALL_MASK = abi.vcpu_info.offsetof("evtchn_upcall_mask")
_U32 = struct.Struct("<I")
_GRANT_ENTRY = struct.Struct("<HHI")       # grant_entry_v1: flags, domid, frame (checked below)
assert [abi.grant_entry_v1.offsetof(m) for m in ("flags", "domid", "frame")] == [0, 2, 4] \
    and abi.grant_entry_v1.size == _GRANT_ENTRY.size
_PERMS = re.compile(r"([nrwb])(\d{1,5})")      # one xenstore permission, as XS_GET_PERMS lists it



class PvPlatform:
    """Guest ``name`` (domain ``domid``) on ``memory`` as ``boot`` (a PvBootInfo) laid it
    out, served by ``dom0`` (a shared Dom0; a new one if None)."""

    def __init__(self, memory, boot, console_write, name="pvguest", clock=time.monotonic_ns,
                 wallclock=time.time_ns, tsc=None, dom0=None, domid=GUEST_DOMID):
        self.clock = clock
        self.boot_ns = clock()
        # The vCPU's TSC (Vcpu.guest_tsc); without a vCPU, 2 x system time.
        self.tsc = tsc or (lambda: TSC_PER_NS * self.system_time_ns())
        lay = boot.layout
        self.host = dom0 if dom0 is not None else Dom0()
        self.domains = self.host.domains
        self.dom0 = self.host.domain
        self.domid = domid
        self.guest = Domain(domid, memory, name=name, grant_frames=lay.grant_frames)
        self.guest.place_shared_info(lay.shared_info_gfn)
        self.guest.shared_info()[_UPCALL_MASK] = 1
        self._write_wallclock(wallclock())
        self.update_time(0)
        self.timer_deadline = None        # system-time ns of the armed VIRQ_TIMER, or None
        self.poll_ports = None            # ports a SCHEDOP_poll waits for, or None
        self.poll_deadline = None
        self.upcalls = 0
        self.timer_fired = 0

        # The console ring, xenconsoled's way: a guest port for domain 0, bound by domain 0.
        memory.fill(lay.console_page, abi.PAGE_SIZE)
        memory.fill(lay.store_page, abi.PAGE_SIZE)
        self.xenstore = self.host.xenstore
        self.xs = self.host.xs
        self.xenstore_conn = self.host.add_guest(self.guest, self.guest.page(lay.store_gfn),
                                                 lambda: self.dom0.evtchn.send(self.dom0_store_port))
        chans = self.guest.evtchn
        self.console_port = chans.alloc_unbound(abi.DOMID_SELF, 0)
        self.store_port = chans.alloc_unbound(abi.DOMID_SELF, 0)
        self.console = ConsoleBackend(self.guest.page(lay.console_gfn), console_write,
                                      lambda: self.dom0.evtchn.send(self.dom0_console_port))
        self.dom0_console_port = self.dom0.evtchn.bind_interdomain(domid, self.console_port,
                                                                   notify=self.console.on_event)
        # The xenstore ring: introduced to the store above, served on every event.
        self.dom0_store_port = self.dom0.evtchn.bind_interdomain(
            domid, self.store_port, notify=lambda port: self.xenstore_conn.handle())
        write_start_info(memory, boot, self.store_port, self.console_port)
        self._ring_gfns = (lay.console_gfn, lay.store_gfn)

    # --- time -----------------------------------------------------------------------

    def system_time_ns(self):
        return self.clock() - self.boot_ns

    def _write_wallclock(self, now_ns):
        si = self.guest.shared_info()
        boot_wall = now_ns - self.system_time_ns()
        sec, nsec = divmod(boot_wall, 1_000_000_000)
        off = {name: abi.shared_info.offsetof(name) for name in ("wc_version", "wc_sec", "wc_nsec", "wc_sec_hi")}
        version = _U32.unpack_from(si, off["wc_version"])[0]
        _U32.pack_into(si, off["wc_version"], version + 1)
        _U32.pack_into(si, off["wc_sec"], sec & 0xFFFF_FFFF)
        _U32.pack_into(si, off["wc_nsec"], nsec)
        _U32.pack_into(si, off["wc_sec_hi"], sec >> 32)
        _U32.pack_into(si, off["wc_version"], version + 2)

    def update_time(self, vcpu_id):
        """Refresh vcpu_info.time (version odd while it changes, as Xen does)."""
        tsc = self.tsc()
        now = self.system_time_ns()
        si = self.guest.shared_info()
        base = vcpu_id * abi.vcpu_info.size + _TIME
        odd = (_U32.unpack_from(si, base)[0] + 1) | 1
        abi.vcpu_time_info.pack_into(si, base, {
            "version": odd, "tsc_timestamp": tsc,
            "system_time": now, "tsc_to_system_mul": TSC_TO_SYSTEM_MUL, "tsc_shift": 0})
        _U32.pack_into(si, base, odd + 1)

    # --- the timer and sleeps ---------------------------------------------------------

    def set_timer(self, deadline_ns):
        """set_timer_op: VIRQ_TIMER at system time ``deadline_ns``; 0 cancels."""
        self.timer_deadline = deadline_ns or None

    def start_poll(self, ports, deadline_ns):
        self.poll_ports = list(ports)
        self.poll_deadline = deadline_ns or None

    def tick(self, now_host):
        """Fire what is due at host time ``now_host``; True if an upcall is due afterwards."""
        now = now_host - self.boot_ns
        if self.timer_deadline is not None and now >= self.timer_deadline:
            self.timer_deadline = None
            self.timer_fired += 1
            self.guest.evtchn.send_virq(abi.VIRQ_TIMER, 0)
        return self.guest.evtchn.upcall_pending(0)

    def next_deadline(self):
        """The host-clock ns of the next timer or poll timeout, or None."""
        times = [t for t in (self.timer_deadline, self.poll_deadline if self.poll_ports is not None else None)
                 if t is not None]
        return self.boot_ns + min(times) if times else None

    def wakes(self, now_host):
        """Does a sleeping vCPU 0 wake up (SCHEDOP_poll: a listed port pending or the
        timeout passed; otherwise an upcall is due)?"""
        if self.poll_ports is not None:
            chans = self.guest.evtchn
            if any(chans.is_pending(p) for p in self.poll_ports) or (
                    self.poll_deadline is not None and now_host - self.boot_ns >= self.poll_deadline):
                self.poll_ports = self.poll_deadline = None
                return True
            return False
        return self.guest.evtchn.upcall_pending(0)

    def upcall_vector(self):
        """The vector to deliver now for vCPU 0, or None (no vector, nothing pending, masked)."""
        vector = self.guest.upcall_vector
        if vector is None or not self.guest.evtchn.upcall_pending(0):
            return None
        return vector

    # --- save / restore (docs/migration-stream.md, "PV guests") ------------------------

    def host_written_frames(self):
        """The guest's frames that domain 0 writes with its own stores, which the dirty
        log (the guest's write exits) never sees: shared_info (event bits, time), the
        console and xenstore rings, the grant table frames (GTF_reading/writing), and
        every frame the guest grants writable to another domain (a backend's rings,
        the pages a disk read fills). Live migration counts them dirty in every round
        (as Xen marks a frame dirty when a writable grant mapping of it goes)."""
        guest = self.guest
        frames = set(self._ring_gfns)
        frames.update(guest.grant_table.frames)
        if guest.shared_info_gfn is not None:
            frames.add(guest.shared_info_gfn)
        frames.update(gfn for gfn, pins in guest.foreign_pins.items() if pins)
        writable_grant = abi.GTF_permit_access
        mask = abi.GTF_type_mask | abi.GTF_readonly
        for gfn in guest.grant_table.frames:
            for flags, _, frame in _GRANT_ENTRY.iter_unpack(guest.page(gfn)):
                if flags & mask == writable_grant:
                    frames.add(frame)
        return sorted(gfn for gfn in frames if gfn < guest.nr_gfns)

    def save(self):
        """The platform's own state as plain values (the ``pv`` device of a snapshot):
        system time, the armed timer and poll, the upcall vector, ballooned-out frames,
        the guest's ring ports, the console backend and the guest's xenstore connection.
        Refused (MigrationError) while something cannot be carried: an open xenstore
        transaction, or a PV page-table type or pin."""
        guest = self.guest
        mmu = pv_mmu.mmu_of(guest)
        if mmu.table_frames() or mmu.base(0) is not None:
            raise MigrationError(f"domain {guest.domid} has PV page-table types or pins "
                                 f"(mmu_update/mmuext_op), which a snapshot does not carry")
        released = []
        if guest.nr_pages != guest.nr_gfns:
            released = [gfn for gfn in range(guest.nr_gfns) if not guest.owns(gfn)]
        return {"domid": guest.domid, "system_time_ns": self.system_time_ns(),
                "timer_deadline": self.timer_deadline, "poll_ports": self.poll_ports,
                "poll_deadline": self.poll_deadline, "upcalls": self.upcalls,
                "timer_fired": self.timer_fired, "upcall_vector": guest.upcall_vector,
                "released": released, "console_port": self.console_port, "store_port": self.store_port,
                "console": self.console.save(), "xenstore_connection": self.xenstore_conn.save()}

    def save_domain(self):
        """(grant table, event channels, xenstore nodes) of the guest's domain: the
        GRANT_TABLE and EVENT_CHANNELS state maps and its xenstore home directory as
        (path, value, permissions) triples, parents first."""
        home = domain_path(self.guest.domid)
        nodes = [n for n in self.xenstore.save() if n[0] == home or n[0].startswith(home + "/")]
        return self.guest.grant_table.save(), self.guest.evtchn.save(), nodes

    def restore(self, state, grant_table, event_channels, xenstore):
        """Put a saved guest into this freshly built platform (guest RAM already holds
        the saved pages): ``state`` from save(), the rest from save_domain(). The guest's
        ring ports are connected to domain 0's backends again (which then look at their
        rings once, as a reconnecting backend does). Returns the ballooned-out frames
        (the VMM unmaps them). Everything is checked before the platform changes; a
        refused part raises MigrationStreamError, and the VMM discards the platform."""
        guest = self.guest
        f = StateFields(state, f"PV platform of domain {guest.domid}")
        if f.uint("domid", abi.DOMID_FIRST_RESERVED) != guest.domid:
            f.fail("domid", f"{state['domid']}, but this guest is domain {guest.domid}")
        system_time = f.uint("system_time_ns", 1 << 63)
        timer_deadline = f.optional_uint("timer_deadline", 1 << 64)
        poll_ports = f.raw("poll_ports")
        if poll_ports is not None:
            poll_ports = f.uint_list("poll_ports", guest.evtchn.max_ports, 128)
        poll_deadline = f.optional_uint("poll_deadline", 1 << 64)
        upcalls, timer_fired = f.uint("upcalls", 1 << 64), f.uint("timer_fired", 1 << 64)
        vector = f.optional_uint("upcall_vector", 256)
        if vector is not None and vector < 0x10:
            f.fail("upcall_vector", f"{vector:#x} is an exception vector")
        released = f.uint_list("released", guest.nr_gfns, guest.nr_gfns)
        ports = {name: f.integer(name, 1, guest.evtchn.max_ports - 1) for name in ("console_port", "store_port")}
        console = f.raw("console")
        connection = f.raw("xenstore_connection")
        self.xenstore_conn.check_state(connection, f"{f.component}: xenstore connection")
        f.done()
        nodes = _checked_nodes(xenstore, domain_path(guest.domid))
        self.console.check_state(console)
        # The fresh platform's rings are bound to domain 0: unbind them (the guest side
        # waits UNBOUND), then the guest's own tables replace the fresh ones.
        for port in (self.dom0_console_port, self.dom0_store_port):
            self.dom0.evtchn.close(port)
        guest.grant_table.restore(grant_table)
        guest.evtchn.restore(event_channels)
        for gfn in released:
            guest.release(gfn)
        guest.upcall_vector = vector
        self.boot_ns = self.clock() - system_time
        self.timer_deadline, self.poll_ports, self.poll_deadline = timer_deadline, poll_ports, poll_deadline
        self.upcalls, self.timer_fired = upcalls, timer_fired
        self.console_port, self.store_port = ports["console_port"], ports["store_port"]
        self.console.restore(console)
        _restore_nodes(self.xs, domain_path(guest.domid), nodes)
        self.xenstore_conn.restore(connection)
        try:
            self.dom0_console_port = self.dom0.evtchn.bind_interdomain(guest.domid, self.console_port,
                                                                       notify=self.console.on_event)
            self.dom0_store_port = self.dom0.evtchn.bind_interdomain(
                guest.domid, self.store_port, notify=lambda port: self.xenstore_conn.handle())
        except EventChannelError as e:
            raise MigrationStreamError(f"PV platform of domain {guest.domid}: the console or xenstore "
                                       f"port is not waiting for domain 0 in the saved event channels: {e}") from None
        return released


def _checked_nodes(nodes, home):
    """The saved xenstore home directory as (path, value, [Perm]) triples, checked."""
    if not isinstance(nodes, (list, tuple)) or not nodes:
        raise MigrationStreamError(f"xenstore of {home}: expected a list of nodes, {home} first")
    seen, out = set(), []
    for index, node in enumerate(nodes):
        where = f"xenstore of {home}: node {index}"
        if not isinstance(node, (list, tuple)) or len(node) != 3:
            raise MigrationStreamError(f"{where}: expected (path, value, permissions)")
        path, value, perms = node
        if not isinstance(path, str) or not (path == home if index == 0 else path.startswith(home + "/")):
            raise MigrationStreamError(f"{where}: {path!r} is not {'the home ' + home if index == 0 else 'below ' + home}")
        parent = path.rsplit("/", 1)[0]
        if path in seen or (index and parent not in seen):
            raise MigrationStreamError(f"{where}: {path} repeats or comes before its parent")
        if not isinstance(value, bytes) or len(value) > XENSTORE_PAYLOAD_MAX:
            raise MigrationStreamError(f"{where} ({path}): the value is not bytes of at most {XENSTORE_PAYLOAD_MAX}")
        parsed = _PERMS.findall(perms) if isinstance(perms, str) else []
        if not parsed or "".join(a + d for a, d in parsed) != perms:
            raise MigrationStreamError(f"{where} ({path}): permissions {perms!r} are not [nrwb]<domid>...")
        seen.add(path)
        out.append((path, value, [Perm(int(d), a) for a, d in parsed]))
    return out


def _restore_nodes(xs, home, nodes):
    """Replace the home directory with the saved nodes (as domain 0, the toolstack)."""
    try:
        xs.rm(home)
        for path, value, perms in nodes:
            xs.write(path, value)
            xs.set_perms(path, perms)
    except XenstoreError as e:
        raise MigrationStreamError(f"xenstore of {home}: the saved nodes cannot be written: {e}") from None
