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

import struct
import time

from pyvmm.boot.pvboot import write_start_info
from pyvmm.pv import abi
from pyvmm.pv.console import ConsoleBackend
from pyvmm.pv.dom0 import Dom0
from pyvmm.pv.domain import Domain

GUEST_DOMID = 1
TSC_PER_NS = 2                             # the vCPU's TSC runs at 2 GHz (Vcpu.guest_tsc)
TSC_TO_SYSTEM_MUL = 1 << 31                # ns = (tsc_delta << 0) * 2**31 >> 32 = tsc_delta / 2
_TIME = abi.vcpu_info.offsetof("time")
_UPCALL_MASK = abi.vcpu_info.offsetof("evtchn_upcall_mask")
_U32 = struct.Struct("<I")


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
