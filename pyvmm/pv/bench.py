"""`pyvmm bench pv`: what the paravirtual interface costs, measured around the pvbench guest.

Responsibility: boot guests/build/pvbench.elf (guests/pvbench.c) as a PV guest and
stamp, when each of its phase markers arrives (a console_io hypercall
"@pvbench NAME begin" / "@pvbench NAME end OPS"), the host clock and the vCPU's exit
counters, so every phase's time and exits are measured by the VMM, outside the
guest. In one run:
- the null hypercall round trip (xen_version(XENVER_version)) next to the CPUID exit
  of the same guest, served by the C exit path (``cpuid``) and, with that fast path
  turned off for the phase, by the Python handler like a hypercall (``cpuid_python``);
- N page-table updates as N stores into a live L1 table (under ``--mmu shadow`` each
  exits: the shadow MMU write-protects the tables it derived translations from) next
  to the same N updates as one batched ``mmu_update`` and as one ``multicall`` of N
  ``update_va_mapping``; every update is followed by a load through it in all three,
  so the three differ only in how the updates reach the VMM (the Xen paper's claim:
  batching wins);
- domain 0 mapping+unmapping and copying the guest's grants (the guest grants pages
  and sends one event; domain 0's handler does the work and times each operation),
  next to the same page reached by guest-physical address without a grant (a view)
  and the same 4 KiB copied between views directly: what the grant checks add.

Invariants: every number comes from this run; a guest that does not power off
cleanly, a phase marker missing or out of order, or a check the guest failed raises
PyvmmError instead of a report; the marker hypercalls themselves are subtracted
from each phase's exits (one VMCALL per phase: the end marker's).
"""

import os
import statistics
import time

from pyvmm.errors import PyvmmError
from pyvmm.pv import abi

__all__ = ["bench_pv", "run_guest", "format_results", "PHASES"]

PVBENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                       "guests", "build", "pvbench.elf")
PHASES = ("null_hypercall", "cpuid", "cpuid_python", "pt_trapped", "pt_mmu_update", "pt_multicall",
          "grant_dom0")
MARK = b"@pvbench "
GRANT_ROUNDS = 50
_HOST, _COPY_FLAGS = abi.GNTMAP_host_map, abi.GNTCOPY_source_gref | abi.GNTCOPY_dest_gref


class _PhaseClock:
    """The guest's console: phase markers are stamped, everything else is kept as text."""

    def __init__(self, grant_rounds):
        self.machine = None
        self.grant_rounds = grant_rounds
        self.text = bytearray()
        self.phases = {}            # name -> {"ns", "ops", "exits": {reason name: n}}
        self.grants = None          # domain 0's own timings of the grant work
        self._open = None           # (name, t0, exit counts at begin)
        self._fast_cpuid = None

    def _counts(self):
        return {r.name: n for r, n in self.machine.vcpu.stats.count.items()}

    def __call__(self, data):
        data = bytes(data)
        if not data.startswith(MARK):
            self.text += data
            return
        now = time.perf_counter_ns()
        words = data[len(MARK):].decode("ascii", "replace").split()
        if len(words) < 2:
            raise PyvmmError(f"pvbench: malformed marker {data!r}")
        name, what = words[0], words[1]
        if name == "setup" and what == "grants":
            self._bind_grants(*(int(w) for w in words[2:5]))
        elif what == "begin":
            if self._open is not None:
                raise PyvmmError(f"pvbench: phase {name} begins inside phase {self._open[0]}")
            if name == "cpuid_python":          # this phase: CPUID through the Python handler
                self._fast_cpuid = self.machine.vcpu.fast_paths
                self.machine.engine.set_fast_cpuid(False)
            self._open = (name, self._counts(), time.perf_counter_ns())
        elif what == "end":
            if self._open is None or self._open[0] != name:
                raise PyvmmError(f"pvbench: phase {name} ends but {self._open and self._open[0]} is open")
            _, before, t0 = self._open
            after = self._counts()
            exits = {r: after.get(r, 0) - before.get(r, 0) for r in after}
            exits["VMCALL"] -= 1                # the end marker's own hypercall
            self.phases[name] = {"ns": now - t0, "ops": int(words[2]),
                                 "exits": {r: n for r, n in exits.items() if n}}
            self._open = None
            if name == "cpuid_python":
                self.machine.engine.set_fast_cpuid(self._fast_cpuid)

    # --- domain 0's side of the grant phase --------------------------------------------

    def _bind_grants(self, port, first_ref, count):
        pv = self.machine.pv
        pv.dom0.evtchn.bind_interdomain(pv.guest.domid, port,
                                        notify=lambda _port: self._grant_work(first_ref, count))

    def _grant_work(self, first_ref, count):
        """Map+unmap every grant and copy each source onto its destination, each
        ``grant_rounds`` times, timed per operation; then the baselines on the same pages."""
        pv = self.machine.pv
        guest, table = pv.guest, pv.dom0.grant_table
        refs = range(first_ref, first_ref + 2 * count)
        rounds = self.grant_rounds
        perf = time.perf_counter_ns
        t0 = perf()
        for _ in range(rounds):
            for ref in refs:
                table.unmap_grant_ref(table.map_grant_ref(_HOST, ref, guest.domid).handle)
        map_ns = (perf() - t0) / (rounds * len(refs))
        ops = [{"source": _gref(first_ref + i, guest.domid), "dest": _gref(first_ref + count + i, guest.domid),
                "len": abi.PAGE_SIZE, "flags": _COPY_FLAGS} for i in range(count)]
        t0 = perf()
        for _ in range(rounds):
            for op in ops:
                table.copy(op)
        copy_ns = (perf() - t0) / (rounds * count)
        # Baselines: the same frames by guest-physical address, no grant checks.
        frames = [guest.grant_table.read_entry(ref)["frame"] for ref in refs]
        view = guest.memory.view
        t0 = perf()
        for _ in range(rounds):
            for gfn in frames:
                view[gfn << 12:(gfn + 1) << 12].release()
        view_ns = (perf() - t0) / (rounds * len(frames))
        pairs = [(view[frames[i] << 12:(frames[i] + 1) << 12], view[frames[count + i] << 12:(frames[count + i] + 1) << 12])
                 for i in range(count)]
        t0 = perf()
        for _ in range(rounds):
            for src, dst in pairs:
                dst[:] = src
        memcpy_ns = (perf() - t0) / (rounds * count)
        for src, dst in pairs:
            src.release()
            dst.release()
        self.grants = {"pages": 2 * count, "copies": count, "rounds": rounds,
                       "map_unmap_ns": round(map_ns), "view_ns": round(view_ns),
                       "copy_ns": round(copy_ns), "memcpy_view_ns": round(memcpy_ns)}


def _gref(ref, domid):
    return {"u": {"ref": ref, "gmfn": ref}, "domid": domid, "offset": 0}


def run_guest(n=512, grants=16, mmu="shadow", grant_rounds=GRANT_ROUNDS, kernel=PVBENCH):
    """One boot of the pvbench guest; returns (phases, domain 0's grant timings)."""
    from pyvmm.machine import Machine, VmConfig
    if not os.path.exists(kernel):
        raise PyvmmError(f"{kernel}: the pvbench guest is missing (make -C guests)")
    clock = _PhaseClock(grant_rounds)
    machine = Machine(VmConfig(kernel=kernel, pv=True, mmu=mmu, cmdline=f"n={n} grants={grants}",
                               console=clock))
    clock.machine = machine
    try:
        status, reason = machine.run()
    finally:
        machine.close()
    text = clock.text.decode("utf-8", "replace")
    failed = [line for line in text.splitlines() if line.startswith("FAIL")]
    if status != 0 or failed:
        raise PyvmmError(f"pvbench guest (--mmu {mmu}) ended with status {status} ({reason}); "
                         f"failed checks: {failed or 'none'}")
    missing = [p for p in PHASES if p not in clock.phases]
    if missing or clock.grants is None:
        raise PyvmmError(f"pvbench guest (--mmu {mmu}): phases {missing} were never measured")
    return clock.phases, clock.grants


def _row(phase):
    ops = phase["ops"]
    total = sum(phase["exits"].values())
    return {"ops": ops, "ns_per_op": round(phase["ns"] / ops), "exits": total,
            "exits_per_op": round(total / ops, 2), "exits_by_reason": phase["exits"]}


def bench_pv(n=512, grants=16, repeats=3, mmu="shadow"):
    """Run the guest ``repeats`` times under ``mmu``; each phase's best run (least time,
    this 2-core VM is shared) is reported, with the exits of that run."""
    runs = [run_guest(n=n, grants=grants, mmu=mmu) for _ in range(repeats)]
    best = {p: min((r[0][p] for r in runs), key=lambda ph: ph["ns"]) for p in PHASES}
    rows = {p: _row(best[p]) for p in PHASES}
    grant_runs = [r[1] for r in runs]
    g = {k: min(run[k] for run in grant_runs) for k in ("map_unmap_ns", "view_ns", "copy_ns", "memcpy_view_ns")}
    g.update({k: grant_runs[0][k] for k in ("pages", "copies", "rounds")})
    trapped, batched, multi = rows["pt_trapped"], rows["pt_mmu_update"], rows["pt_multicall"]
    return {
        "guest": PVBENCH, "mmu": mmu, "n": n, "repeats": repeats, "phases": rows,
        "null_hypercall_vs_cpuid": {
            "hypercall_ns": rows["null_hypercall"]["ns_per_op"],
            "cpuid_c_path_ns": rows["cpuid"]["ns_per_op"],
            "cpuid_python_ns": rows["cpuid_python"]["ns_per_op"],
            "hypercall_over_cpuid_python": round(rows["null_hypercall"]["ns_per_op"] / rows["cpuid_python"]["ns_per_op"], 2)},
        "pt_updates": {
            "baseline": "pt_trapped: the same updates as stores that exit one by one",
            "trapped_exits": trapped["exits"], "mmu_update_exits": batched["exits"],
            "multicall_exits": multi["exits"],
            "trapped_over_mmu_update_time": round(trapped["ns_per_op"] / batched["ns_per_op"], 2),
            "trapped_over_multicall_time": round(trapped["ns_per_op"] / multi["ns_per_op"], 2)},
        "grants": dict(g, baseline="view_ns: the same page by guest-physical address without a grant; "
                                   "memcpy_view_ns: 4 KiB copied between those views",
                       map_unmap_over_view=round(g["map_unmap_ns"] / max(g["view_ns"], 1), 1),
                       copy_over_memcpy=round(g["copy_ns"] / max(g["memcpy_view_ns"], 1), 1)),
        "spread": {p: round(statistics.pstdev([r[0][p]["ns"] for r in runs]) / max(best[p]["ns"], 1), 3)
                   for p in PHASES} if repeats > 1 else {},
    }


def format_results(result):
    """The report as text, a line per phase, then the three comparisons."""
    lines = [f"pvbench guest under --mmu {result['mmu']}, n={result['n']}, best of {result['repeats']} runs:"]
    for name, row in result["phases"].items():
        reasons = ", ".join(f"{r} {k}" for r, k in sorted(row["exits_by_reason"].items(), key=lambda x: -x[1])[:3])
        lines.append(f"  {name:<15} {row['ns_per_op']:>9} ns/op  {row['exits_per_op']:>6} exits/op  ({reasons})")
    h = result["null_hypercall_vs_cpuid"]
    lines.append(f"null hypercall {h['hypercall_ns']} ns; CPUID exit {h['cpuid_c_path_ns']} ns in the C path, "
                 f"{h['cpuid_python_ns']} ns through the Python handler (hypercall/CPUID {h['hypercall_over_cpuid_python']}x)")
    p = result["pt_updates"]
    lines.append(f"{result['n']} page-table updates: trapped {p['trapped_exits']} exits, mmu_update "
                 f"{p['mmu_update_exits']}, multicall {p['multicall_exits']}; trapped takes "
                 f"{p['trapped_over_mmu_update_time']}x the time of one mmu_update batch, "
                 f"{p['trapped_over_multicall_time']}x that of one multicall")
    g = result["grants"]
    lines.append(f"domain 0 grant map+unmap {g['map_unmap_ns']} ns/page (a plain view {g['view_ns']} ns, "
                 f"{g['map_unmap_over_view']}x); grant copy {g['copy_ns']} ns/page (memcpy of views "
                 f"{g['memcpy_view_ns']} ns, {g['copy_over_memcpy']}x)")
    return "\n".join(lines)
