"""The hypervisor: the host running several PV domains in one pyvmm process.

Responsibility: build one domain 0 (``dom0.Dom0``: the domain table, xenstore, the
backends' side) and, for each guest a ``DomainSpec`` names, a Machine of its own
(its RAM, vCPU, engine, MMU and domid 1, 2, ...) whose PV platform joins that domain
0; schedule the guests' vCPUs with the ``CreditScheduler`` on the calling thread
(each vCPU runs one slice at a time, ``Vcpu.run_slice``); and report how each domain
ended. Interdomain event channels and grants work between the guests because they
share one DomainTable: an event sent to a blocked domain wakes its vCPU (``wake``),
BOOSTed as Xen's credit scheduler does.

Invariants:
- at most one guest runs at a time, on the thread inside ``run()``; another thread
  only wakes vCPUs or asks for a stop;
- a domain whose vCPU stops (shutdown, crash, a fault the VMM stops it for) is
  destroyed at once, as ``xl destroy`` would: its channels close and its grant
  mappings go, so peers see closed ports; the other domains keep running;
- when every live domain is blocked and nothing (no timer, no other domain, no
  input) can ever wake one, the blocked domains are stopped with that reason
  instead of sleeping forever;
- each domain's console (ring and console_io) is written whole lines at a time with
  ``<name>: `` in front when more than one domain runs;
- every domain's vifs join one HostNetwork (devices/net/hostnet.py): ``switch=NAME``
  is the same switch in every domain; with UDP endpoints the idle scheduler sleeps on
  their sockets, so a datagram wakes the domain it is for.
"""

import re
import sys
import threading
from dataclasses import dataclass, field

from pyvmm.devices.net.hostnet import HostNetwork
from pyvmm.errors import ConfigError, PyvmmError
from pyvmm.pv.dom0 import Dom0
from pyvmm.pv.scheduler import ALL_STOPPED, DEFAULT_WEIGHT, CreditScheduler, format_stats

SPEC_KEYS = ("name", "cmdline", "memory", "weight", "cap", "initrd", "net", "disk")
REPEATABLE_KEYS = {"net": "nets", "disk": "disks"}     # key= given once per item -> DomainSpec list
_KEY_SPLIT = re.compile(r",(?=(?:%s)=)" % "|".join(SPEC_KEYS))
SWITCH_INTERVAL_S = 0.0002
NOTHING_WAKES = "domain blocked with nothing to wake it: every live domain is blocked without a timer"


@dataclass
class DomainSpec:
    """One guest domain: its PV kernel and what `--domain K[,key=value...]` sets."""

    kernel: str
    name: str = ""
    cmdline: str = ""
    memory: str = "64M"
    weight: int = DEFAULT_WEIGHT
    cap: int = 0
    initrd: str = None
    nets: list = field(default_factory=list)     # --net specs of its vifs (devices/net/vif.py)
    disks: list = field(default_factory=list)    # --disk specs of its vbds (devices/block/vbd.py)


def parse_domain_spec(text, **defaults):
    """``KERNEL[,name=N][,cmdline=...][,memory=M][,weight=W][,cap=P][,initrd=F][,net=NET]...[,disk=DISK]...``;
    a comma inside a value is kept unless a known key follows it (``cmdline=a,b``,
    ``net=udp,local=H:P,remote=H:P`` and ``disk=F,format=qcow2,readonly`` are fine);
    ``net=`` may be given once per vif, ``disk=`` once per disk.
    ConfigError names the part that is wrong."""
    parts = _KEY_SPLIT.split(text)
    if not parts[0] or parts[0].partition("=")[0] in SPEC_KEYS:
        raise ConfigError(f"--domain {text!r}: start with the kernel's path, then key=value options "
                          f"({', '.join(SPEC_KEYS)})")
    spec = DomainSpec(kernel=parts[0], **defaults)
    seen = set()
    for part in parts[1:]:
        key, _, value = part.partition("=")
        if key in REPEATABLE_KEYS:
            if not value:
                raise ConfigError(f"--domain {text!r}: {key}= is empty")
            attribute = REPEATABLE_KEYS[key]
            setattr(spec, attribute, getattr(spec, attribute) + [value])
            continue
        if key in seen:
            raise ConfigError(f"--domain {text!r}: {key}= given twice")
        seen.add(key)
        if key in ("weight", "cap"):
            try:
                value = int(value, 0)
            except ValueError:
                raise ConfigError(f"--domain {text!r}: {key}={value!r} is not an integer") from None
        elif not value and key != "cmdline":
            raise ConfigError(f"--domain {text!r}: {key}= is empty")
        setattr(spec, key, value)
    return spec


class LinePrefixer:
    """A console writer that emits whole lines, each with ``prefix`` in front."""

    def __init__(self, prefix, out):
        self.prefix = prefix.encode()
        self.out = out
        self._partial = b""

    def __call__(self, data):
        data = self._partial + bytes(data)
        *lines, self._partial = data.split(b"\n")
        if lines:
            self.out(b"".join(self.prefix + line + b"\n" for line in lines))

    def flush(self):
        """Write an unterminated last line (at shutdown)."""
        if self._partial:
            self.out(self.prefix + self._partial + b"\n")
            self._partial = b""


@dataclass
class DomainResult:
    domid: int
    name: str
    status: int
    reason: str


class _ScheduledVcpu:
    """A domain's vCPU as the scheduler sees it; destroys the domain when it stops."""

    def __init__(self, host, machine, domid, name):
        self.host = host
        self.machine = machine
        self.vcpu = machine.vcpu
        self.domid = domid
        self.name = name

    def run_slice(self, max_ns):
        used, state = self.vcpu.run_slice(max_ns)
        if state == "stopped":
            self.host._stopped(self)
        return used, state

    @property
    def wake_deadline_ns(self):
        return self.vcpu.wake_deadline_ns

    def kick(self):
        self.vcpu.kick()


class _IdleWaiter:
    """The scheduler's waiter: an Event, except that waiting with no timeout (no timer
    anywhere) means nothing can wake a domain unless input is attached or a host
    endpoint can bring a frame in; with endpoints it sleeps on them (HostNetwork.wait),
    so a datagram for a vif wakes its domain."""

    def __init__(self, host):
        self.host = host
        self.event = threading.Event()

    def wait(self, timeout):
        network = self.host.network
        if timeout is None and not self.host.input_attached and not network.can_wake:
            self.host._stop_blocked(NOTHING_WAKES)
            return True
        if network.can_wake:
            if not self.event.is_set():
                network.wait(timeout)
            return self.event.is_set()
        return self.event.wait(timeout)

    def set(self):
        self.event.set()
        self.host.network.wake()

    def clear(self):
        self.event.clear()


class Hypervisor:
    """Guest domains ``specs`` (DomainSpecs) under one domain 0 and one CreditScheduler.

    ``console(bytes)`` receives every domain's output (stdout by default); ``mmu`` is
    the MMU mode of every guest ("ept" or "shadow")."""

    def __init__(self, specs, *, mmu="ept", console=None, scheduler=None):
        from pyvmm.machine import Machine, VmConfig      # machine.py imports pv: no cycle at import
        specs = list(specs)
        if not specs:
            raise ConfigError("no guest domain to run")
        self.dom0 = Dom0()
        self.network = HostNetwork()      # the switches and endpoints every domain's vifs join
        self.scheduler = scheduler or CreditScheduler(waiter=_IdleWaiter(self))
        self.input_attached = False
        out = console or _stdout
        self.machines = {}
        self.entries = {}
        self.consoles = {}
        self.results = {}
        names = set()
        try:
            for domid, spec in enumerate(specs, start=1):
                name = spec.name or _kernel_name(spec.kernel)
                if name in names:
                    name = f"{name}.{domid}"
                names.add(name)
                write = out
                if len(specs) > 1:
                    write = self.consoles[domid] = LinePrefixer(f"{name}: ", out)
                config = VmConfig(kernel=spec.kernel, initrd=spec.initrd, cmdline=spec.cmdline,
                                  memory=spec.memory, mmu=mmu, pv=True, console=write, nets=spec.nets,
                                  disks=spec.disks)
                machine = Machine(config, dom0=self.dom0, domid=domid, name=name, network=self.network)
                self.machines[domid] = machine
                entry = self.entries[domid] = _ScheduledVcpu(self, machine, domid, name)
                self.scheduler.add_domain(domid, [entry], weight=spec.weight, cap=spec.cap)
                self._wake_on_events(machine.pv.guest, entry)
        except BaseException:
            self.close()
            raise

    def _wake_on_events(self, domain, entry):
        """An event pending for the domain's vCPU (from any domain) wakes it."""
        upcall = domain.on_upcall
        scheduler = self.scheduler

        def on_upcall(vcpu_id):
            if upcall is not None:
                upcall(vcpu_id)
            scheduler.wake(entry)
        domain.on_upcall = on_upcall

    # ---- running ----
    def run(self):
        """Run until every domain has stopped; returns {domid: DomainResult}."""
        # The host timers (Ticker threads) that end slices need the GIL while a guest's
        # hypercalls run Python: hand it over within SWITCH_INTERVAL_S, not the default 5 ms.
        switch = sys.getswitchinterval()
        sys.setswitchinterval(min(switch, SWITCH_INTERVAL_S))
        try:
            while self.scheduler.run() != ALL_STOPPED:
                pass
        except KeyboardInterrupt:
            for entry in list(self.entries.values()):
                if entry.domid not in self.results:
                    entry.vcpu.request_stop(130, "interrupted")
                    self._stopped(entry)
            raise
        finally:
            sys.setswitchinterval(switch)
            for write in self.consoles.values():
                write.flush()
        return dict(sorted(self.results.items()))

    def _stopped(self, entry):
        if entry.domid in self.results:
            return
        vcpu = entry.vcpu
        status = vcpu.status if vcpu.status is not None else 1
        self.results[entry.domid] = DomainResult(entry.domid, entry.name, status, vcpu.reason or "stopped")
        try:
            self.dom0.remove(entry.domid)
        except PyvmmError as exc:          # the domain is gone either way; say why not cleanly
            self.results[entry.domid].reason += f" (while destroying it: {exc})"
        entry.machine.close()
        if entry.domid in self.consoles:
            self.consoles[entry.domid].flush()

    def _stop_blocked(self, reason):
        for entry in list(self.entries.values()):
            if entry.domid not in self.results:
                entry.vcpu.request_stop(1, reason)
                self.scheduler.wake(entry)

    def request_stop(self, reason="stopped by the host"):
        """Stop every domain (any thread); run() returns once they have all stopped."""
        for entry in list(self.entries.values()):
            if entry.domid not in self.results:
                entry.vcpu.request_stop(1, reason)
                self.scheduler.wake(entry)
                entry.vcpu.kick()

    def close(self):
        for domid, machine in self.machines.items():
            if domid not in self.results:
                machine.close()
        self.network.close()

    # ---- reports ----
    def stats(self):
        """The scheduler's table plus, per domain, exits and upcalls."""
        lines = [format_stats(self.scheduler.stats())]
        for domid, machine in sorted(self.machines.items()):
            vcpu = machine.vcpu
            top = ", ".join(f"{r.name} {n}" for r, n, _ in vcpu.stats.rows()[:4])
            lines.append(f"domain {domid} ({self.entries[domid].name}): {vcpu.stats.total} exits ({top}); "
                         f"{machine.pv.upcalls} upcalls, {machine.pv.timer_fired} timer events")
        return "\n".join(lines)


def boot_domains(specs, *, mmu="ept", stats=False, err=None):
    """`pyvmm boot --pv K --domain K2 ...`: run the domains, print each one's end; the
    exit status is 0 if every domain powered off cleanly, else the first failure's."""
    err = err or sys.stderr
    try:
        host = Hypervisor(specs, mmu=mmu)
    except PyvmmError as exc:
        print(f"pyvmm: {exc}", file=err)
        return 2
    try:
        results = host.run()
    except KeyboardInterrupt:
        results = dict(sorted(host.results.items()))
    finally:
        host.close()
    sys.stdout.flush()
    if stats:
        print(host.stats(), file=err)
    code = 0
    for r in results.values():
        print(f"pyvmm: domain {r.domid} ({r.name}): {'' if r.status == 0 else f'status {r.status}: '}{r.reason}",
              file=err)
        if r.status and not code:
            code = min(r.status, 255)
    return code


def _kernel_name(path):
    base = path.replace("\\", "/").rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[0] if "." in base else base


def _stdout(data):
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()

