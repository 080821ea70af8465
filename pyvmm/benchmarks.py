"""Measurements behind ``pyvmm bench`` and bench/: each figure next to its reference,
measured in the same run.

- exits: per exit type (names as kvm-unit-tests' x86/vmexit.c), the cost of one
  complete exit in pyvmm and the floor, bare Unicorn running the same guest loop
  with hooks that only return (cpu/_unicorn.BareRunner). For RDMSR, WRMSR and mov
  to CR3, which bare Unicorn does not trap at all, the floor is the SVM intercept
  with a hook that only steps over the instruction.
- guest-speed: a compute-bound guest under pyvmm against bare Unicorn.
- mmu: the page-table-heavy guest under EPT and under shadow paging (exits,
  seconds), and the cost of one translation fill in each mode.

Cost per event = (time of a run with N events - time of the same run with 0) / N,
median over ``repeats`` runs, so boot and power-off are not counted.
"""

import os
import statistics
import time

from pyvmm.boot.loader import load_kernel
from pyvmm.cpu._unicorn import BareRunner
from pyvmm.machine import Machine, VmConfig, guest_entry
from pyvmm.mm.memory import GuestMemory, parse_size

GUESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "guests", "build")
EXIT_TESTS = ("cpuid", "vmcall", "inl_pio", "outl_pio", "rdmsr", "wrmsr", "mov_to_cr3")
NEEDS_SVM_FLOOR = frozenset({"rdmsr", "wrmsr", "mov_to_cr3"})


def _guest(name):
    return os.path.join(GUESTS, name + ".elf")


def _sink(data):
    pass


def run_pyvmm(kernel, cmdline, fast_paths=True, memory="64M", mmu="ept"):
    """Seconds to boot ``kernel`` under pyvmm until it powers off; returns (s, machine)."""
    m = Machine(VmConfig(kernel=kernel, cmdline=cmdline, console=_sink, memory=memory, mmu=mmu))
    m.vcpu.fast_paths = fast_paths
    t0 = time.perf_counter()
    status, reason = m.run()
    elapsed = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"benchmark guest {kernel} {cmdline!r} failed: {reason}")
    return elapsed, m


def run_bare(kernel, cmdline, svm=False, memory="64M"):
    """Seconds for bare Unicorn to run ``kernel`` until it writes the power-off port."""
    mem = GuestMemory(parse_size(memory))
    try:
        boot = load_kernel(kernel, mem, cmdline=cmdline)
        runner = BareRunner(mem, guest_entry(boot.entry), svm=svm)
        t0 = time.perf_counter()
        runner.run()
        elapsed = time.perf_counter() - t0
        runner.close()
        return elapsed
    finally:
        mem.close()


def _per_event(run, iters, repeats):
    vals = []
    for _ in range(repeats):
        base = run(0)
        full = run(iters)
        vals.append((full - base) / iters * 1e9)
    return statistics.median(vals)


def exit_costs(iters=50_000, repeats=3, tests=EXIT_TESTS):
    """{test: {"exit_ns", "floor_ns", "floor"} (+ "python_exit_ns" for cpuid)}."""
    kernel = _guest("vmexit")
    out = {}
    for test in tests:
        def pyvmm_run(n, fast=True):
            return run_pyvmm(kernel, f"test={test} iters={n}", fast_paths=fast)[0]

        svm = test in NEEDS_SVM_FLOOR
        row = {"exit_ns": round(_per_event(pyvmm_run, iters, repeats)),
               "floor_ns": round(_per_event(lambda n: run_bare(kernel, f"test={test} iters={n}", svm=svm),
                                            iters, repeats)),
               "floor": "bare Unicorn SVM intercept, hook steps over" if svm
               else "bare Unicorn, Python hook that only returns"}
        if test == "cpuid":
            row["python_exit_ns"] = round(_per_event(lambda n: pyvmm_run(n, fast=False), iters, repeats))
            row["exit_path"] = "in-VMM CPUID table (C), as KVM_SET_CPUID2"
        out[test] = row
    return out


def guest_speed(iters=20_000_000, repeats=3):
    """A compute-bound guest (guests/spin) under pyvmm and under bare Unicorn."""
    kernel = _guest("spin")
    cmd = f"iters={iters}"
    pyvmm_s = statistics.median(run_pyvmm(kernel, cmd)[0] for _ in range(repeats))
    bare_s = statistics.median(run_bare(kernel, cmd) for _ in range(repeats))
    return {"pyvmm_s": round(pyvmm_s, 4), "bare_unicorn_s": round(bare_s, 4),
            "speed_vs_bare": round(bare_s / pyvmm_s, 3), "iters": iters}


def mmu_modes(iters=20_000, fill_iters=20_000, repeats=3, modes=("ept", "shadow")):
    """The page-table-heavy guest (guests/pgtable) under each MMU mode, and the cost
    of one translation fill in each.

    Per mode: exits (total and by reason) and seconds to power-off of pgtable with
    ``iters`` operations (median of ``repeats``); ``fill_ns``: the cost of one
    iteration of vmexit's invlpg_touch (INVLPG a page, load from it), boot
    subtracted. Under EPT that is the CPU's two-dimensional walk with no exit; under
    shadow paging an INVLPG exit plus a #PF exit that fills the shadow entry
    (``fill_exit_ns`` is the #PF exit alone, from the exit statistics)."""
    pgtable, vmexit = _guest("pgtable"), _guest("vmexit")
    out = {}
    for mode in modes:
        runs = [run_pyvmm(pgtable, f"skip=beyond_ram iters={iters}", memory="32M", mmu=mode) for _ in range(repeats)]
        m = runs[-1][1]
        row = {"exits": m.vcpu.stats.total, "seconds": round(statistics.median(s for s, _ in runs), 4),
               "exits_by_reason": {r.name: n for r, n, _ in m.vcpu.stats.rows()}}
        if mode == "shadow":
            row["shadow_mmu"] = dict(m.mmu.stats)

        fill_machines = []

        def fill_run(n):
            seconds, fm = run_pyvmm(vmexit, f"test=invlpg_touch iters={n}", memory="32M", mmu=mode)
            fill_machines.append(fm)
            return seconds
        row["fill_ns"] = round(_per_event(fill_run, fill_iters, repeats))
        if mode == "shadow":                    # the last run is a full one (_per_event)
            row["fill_exit_ns"] = round(next(mean for r, _, mean in fill_machines[-1].vcpu.stats.rows()
                                             if r.name == "EXCEPTION_NMI"))
        out[mode] = row
    if "ept" in out and "shadow" in out:
        out["shadow_vs_ept"] = {"exits": round(out["shadow"]["exits"] / out["ept"]["exits"], 2),
                                "seconds": round(out["shadow"]["seconds"] / out["ept"]["seconds"], 2),
                                "fill": round(out["shadow"]["fill_ns"] / max(out["ept"]["fill_ns"], 1), 1)}
    out["guest"] = f"pgtable iters={iters}"
    return out


MARKER = b"PYVMM-INIT-OK"


def time_to_marker_pyvmm(kernel, initrd, cmdline, memory="256M", marker=MARKER, decompress="host"):
    """Seconds from start until ``marker`` appears on pyvmm's console (the guest then
    runs on to its halt; the time to the marker is what is reported). ``decompress``:
    where the bzImage's payload is decompressed (VmConfig.decompress)."""
    seen = []
    buf = bytearray()
    t0 = time.perf_counter()

    def console(data):
        buf.extend(data)
        if not seen and marker in buf:
            seen.append(time.perf_counter() - t0)

    m = Machine(VmConfig(kernel=kernel, initrd=initrd, cmdline=cmdline, console=console, memory=memory,
                         decompress=decompress))
    status, reason = m.run()
    if not seen:
        raise RuntimeError(f"pyvmm never printed {marker!r}: {reason}")
    return seen[0]


def time_to_marker_qemu(kernel, initrd, cmdline, memory_mib=256, marker=MARKER, timeout=300):
    """Seconds until ``marker`` appears on QEMU TCG's serial console, same files and
    command line, the same CPU model pyvmm shows (EPYC), no ACPI."""
    import shutil
    import subprocess
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        raise RuntimeError("qemu-system-x86_64 is not installed (Debian package qemu-system-x86)")
    cmd = [qemu, "-machine", "pc,accel=tcg", "-cpu", "EPYC", "-m", str(memory_mib), "-kernel", kernel,
           "-initrd", initrd, "-append", cmdline, "-display", "none", "-serial", "stdio", "-monitor", "none",
           "-no-reboot"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    buf = bytearray()
    try:
        while time.perf_counter() - t0 < timeout:
            chunk = proc.stdout.read1(4096)
            if not chunk:
                break
            buf.extend(chunk)
            if marker in buf:
                return time.perf_counter() - t0
        raise RuntimeError(f"QEMU never printed {marker!r}")
    finally:
        proc.kill()
        proc.wait()


def decompressed_kernel(kernel, directory):
    """Write the kernel proper of bzImage ``kernel`` (its payload, decompressed as pyvmm
    does) to ``directory``/vmlinux; return the path. QEMU boots that ELF file through
    its PVH entry note, its own way of skipping the in-guest decompressor."""
    from pyvmm.boot import payload
    from pyvmm.boot.bzimage import read_payload
    found = read_payload(kernel, open(kernel, "rb").read())
    if found is None or not payload.supported(found[0]):
        raise RuntimeError(f"{kernel}: no payload pyvmm can decompress")
    path = os.path.join(directory, "vmlinux")
    with open(path, "wb") as f:
        f.write(payload.decompress(kernel, found[0], found[1], 1 << 31))
    return path


def linux_boot(kernel, initrd, cmdline="console=ttyS0 acpi=off", repeats=1):
    """Boot time to /init's marker, all in the same run, same kernel, initramfs and
    command line:
    - pyvmm_s: pyvmm as it boots by default (the payload decompressed on the host);
    - qemu_tcg_s: QEMU TCG on the bzImage (its decompressor runs in the guest);
    - pyvmm_guest_decompress_s: pyvmm running the kernel's decompressor in the guest;
    - qemu_tcg_vmlinux_s: QEMU TCG on the same kernel decompressed (its PVH entry)."""
    import tempfile

    def median(fn):
        return statistics.median(fn() for _ in range(repeats))

    pyvmm_s = median(lambda: time_to_marker_pyvmm(kernel, initrd, cmdline))
    qemu_s = median(lambda: time_to_marker_qemu(kernel, initrd, cmdline))
    guest_s = median(lambda: time_to_marker_pyvmm(kernel, initrd, cmdline, decompress="guest"))
    with tempfile.TemporaryDirectory() as tmp:
        vmlinux = decompressed_kernel(kernel, tmp)
        qemu_vmlinux_s = median(lambda: time_to_marker_qemu(vmlinux, initrd, cmdline))
    return {"pyvmm_s": round(pyvmm_s, 2), "qemu_tcg_s": round(qemu_s, 2), "ratio": round(pyvmm_s / qemu_s, 2),
            "pyvmm_guest_decompress_s": round(guest_s, 2), "qemu_tcg_vmlinux_s": round(qemu_vmlinux_s, 2),
            "ratio_both_guest_decompress": round(guest_s / qemu_s, 2),
            "ratio_both_host_decompress": round(pyvmm_s / qemu_vmlinux_s, 2)}
