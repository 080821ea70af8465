"""The pyvmm command line: boot, trace.

    pyvmm boot [KERNEL [INITRD]] [--cmdline S] [-m SIZE] [--stats] [--control SOCKET]
    pyvmm boot --pv KERNEL [--disk FILE[,format=raw|qcow2][,readonly]] ...   (disks for blkfront)
    pyvmm boot --pv KERNEL --domain KERNEL2[,name=,cmdline=,memory=,weight=,cap=] ...   (several PV guests)
    pyvmm boot --pv KERNEL --net switch=NAME[,mac=M] | --net udp,local=H:P,remote=H:P[,mac=M] ...   (vifs;
          in --domain: net=...)
    pyvmm restore FILE [--stats] [--control SOCKET]    (a VM saved by `pyvmm ctl SOCKET save FILE`)
    pyvmm receive --listen HOST:PORT [--stats] [--control SOCKET]   (the destination of `ctl migrate`)
    pyvmm ctl SOCKET status|pause|resume|save FILE|migrate HOST:PORT|info-migrate|quit
    pyvmm trace KERNEL [INITRD] [--json] [--stats] [--exceptions de,ud,gp,pf,bp]
    pyvmm step KERNEL [INITRD] [--break cpuid,io,...]   (commands on stdin; see stepper.py)
    pyvmm bench exits|guest-speed|linux-boot|mmu|dirty-scan|storage|migrate|blk|net [--json] [--iters N] [--kernel K --initrd I]

Exit status: 0 when the guest powers off cleanly, 2 for bad input (a one-line
error naming the file and the problem), otherwise non-zero with the reason.
"""

import argparse
import importlib
import json
import os
import sys

from pyvmm.cpu.exits import EXCEPTION_NAMES, SHORT_NAMES, decode_intr_info
from pyvmm.errors import PyvmmError
from pyvmm.storage.imgtool import add_img_arguments, run_img

GUESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "guests", "build")
DEFAULT_KERNEL = os.path.join(GUESTS, "hello.elf")
_EXC_BY_NAME = {v.lstrip("#").lower(): k for k, v in EXCEPTION_NAMES.items()}


def _names(text, table, option, extra=()):
    """The values of a comma-separated list of names from ``table`` (an option's
    argument); ``extra`` names are returned as themselves."""
    out = []
    for name in filter(None, (text or "").split(",")):
        name = name.strip().lower()
        if name in extra:
            out.append(name)
        elif name in table:
            out.append(table[name])
        else:
            known = ", ".join(sorted(table) + list(extra))
            raise PyvmmError(f"{option}: unknown name {name!r} (known: {known})")
    return out


def _exception_bitmap(text):
    vectors = _names(text, _EXC_BY_NAME, "--exceptions", extra=("all",))
    if "all" in vectors:
        return 0xFFFFFFFF
    return sum({1 << v for v in vectors})


def _parser():
    p = argparse.ArgumentParser(prog="pyvmm", description="x86 paravirtual hypervisor emulator")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp, kernel_optional):
        if kernel_optional:
            sp.add_argument("kernel", nargs="?", default=DEFAULT_KERNEL, help="ELF or bzImage (default: hello guest)")
        else:
            sp.add_argument("kernel", help="ELF or bzImage kernel")
        sp.add_argument("initrd", nargs="?", default=None)
        sp.add_argument("--cmdline", default="")
        sp.add_argument("-m", "--memory", default="64M")
        sp.add_argument("--stats", action="store_true", help="print exits by reason at the end")
        sp.add_argument("--exceptions", default="", help="exception bitmap: de,ud,gp,pf,bp,... or all")
        sp.add_argument("--rdtsc-exiting", action="store_true")
        sp.add_argument("--pv", action="store_true",
                        help="boot the kernel the Xen PV way: Xen ELF notes, start_info, console and "
                             "xenstore rings, event channels (docs/pv-boot.md)")
        sp.add_argument("--disk", action="append", default=[], metavar="FILE[,format=raw|qcow2][,readonly]",
                        help="with --pv: a disk for the guest's blkfront (xvda, xvdb ... in order; repeatable)")
        sp.add_argument("--net", action="append", default=[],
                        metavar="switch=NAME[,mac=M] | udp,local=HOST:PORT,remote=HOST:PORT[,mac=M]",
                        help="with --pv: a vif for the guest's netfront on an in-process switch, or on a UDP "
                             "endpoint that talks to another pyvmm (vif 0, 1 ... in order; repeatable)")
        sp.add_argument("--decompress", choices=("host", "guest"), default="host",
                        help="where a bzImage's compressed kernel is decompressed: host (pyvmm does it, "
                             "then enters the kernel at startup_64; default) or guest (the kernel's own "
                             "decompressor runs, as on a PC)")
        sp.add_argument("--mmu", choices=("ept", "shadow", "direct"), default="ept",
                        help="ept: the VMM's EPT-style table under the guest's (default); shadow: the VMM's "
                             "shadow tables built from the guest's (CR3, INVLPG, #PF and page-table "
                             "writes exit); direct: the guest's tables only, CR3 loads and INVLPG exit")

    boot = sub.add_parser("boot", help="boot a kernel and show its console")
    common(boot, True)
    boot.add_argument("--domain", action="append", default=[],
                      metavar="KERNEL[,name=N,cmdline=...,memory=M,weight=W,cap=P,initrd=F,net=NET,disk=DISK]",
                      help="with --pv: one more PV guest in this process (repeatable); all share domain 0 "
                           "and the credit scheduler")
    boot.add_argument("--control", metavar="SOCKET", help="serve the control protocol on this unix socket "
                                                          "(pyvmm ctl SOCKET ...)")
    rs = sub.add_parser("restore", help="run on a VM saved with `pyvmm ctl SOCKET save FILE`")
    rs.add_argument("file")
    rs.add_argument("--stats", action="store_true", help="print exits by reason at the end")
    rs.add_argument("--control", metavar="SOCKET", help="serve the control protocol on this unix socket")
    rc = sub.add_parser("receive", help="take one VM live-migrated from `pyvmm ctl SOCKET migrate` and run it")
    rc.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to wait for the source")
    rc.add_argument("--stats", action="store_true", help="print exits by reason at the end")
    rc.add_argument("--control", metavar="SOCKET", help="serve the control protocol on this unix socket")
    rc.add_argument("--timeout", type=float, default=30.0, help="seconds the source may go silent (default 30)")
    sub.add_parser("ctl", help="control a VM started with --control (pyvmm ctl --help)", add_help=False)
    tr = sub.add_parser("trace", help="boot a kernel, printing one line per VM exit")
    common(tr, False)
    tr.add_argument("--json", action="store_true", help="JSON lines instead of text")
    st = sub.add_parser("step", help="stop at VM exits and take commands (next, regs, mem, disas, ...)")
    common(st, False)
    st.add_argument("--break", dest="breaks", default="",
                    help="stop only at these exits: " + ",".join(sorted(SHORT_NAMES)))
    bench = sub.add_parser("bench", help="measure exit costs or guest speed next to bare Unicorn")
    bench.add_argument("what", choices=("exits", "guest-speed", "linux-boot", "dirty-scan", "storage", "mmu",
                                        "migrate", "blk", "net", "pv"))
    bench.add_argument("--kernel", help="linux-boot: the kernel (default: scripts/fetch_kernel.py's cache)")
    bench.add_argument("--initrd", help="linux-boot: the initramfs (default: scripts/mkinitramfs.py's)")
    bench.add_argument("--json", action="store_true")
    bench.add_argument("--iters", type=int, default=None)
    bench.add_argument("--repeats", type=int, default=3)
    bench.add_argument("--size-mib", type=int, default=256, help="dirty-scan: guest RAM to scan")
    add_img_arguments(sub)
    return p


# Benchmarks whose module has a function(**kwargs) -> dict and format_results(dict) -> str:
# name -> (module, function, keyword arguments from the command line).
_BENCH_MODULES = {
    "migrate": ("pyvmm.migrate.bench", "bench_migrate", lambda a: {"repeats": a.repeats}),
    "blk": ("pyvmm.devices.block.bench", "bench_blk", lambda a: {"repeats": a.repeats}),
    "pv": ("pyvmm.pv.bench", "bench_pv", lambda a: {"n": min(a.iters or 512, 512), "repeats": a.repeats}),
    "net": ("pyvmm.devices.net.bench", "bench_net", lambda a: {"repeats": a.repeats}),
    "storage": ("pyvmm.storage.bench", "bench_storage", lambda a: {}),
}


def _bench(args):
    from pyvmm import benchmarks
    if args.what == "dirty-scan":
        from pyvmm.migrate.dirty_scan_bench import bench_dirty_scan
        result = bench_dirty_scan(size_mib=args.size_mib, dirty_percent=1.0, repeats=args.repeats)
        print(json.dumps(result) if args.json else
              f"dirty-page scan over {args.size_mib} MiB: C {result['c_scan_gbps']} GB/s, "
              f"Python {result['python_scan_gbps']} GB/s, memcpy {result['memcpy_gbps']} GB/s")
        return 0
    if args.what in _BENCH_MODULES:
        module, function, kwargs = _BENCH_MODULES[args.what]
        bench = importlib.import_module(module)
        result = getattr(bench, function)(**kwargs(args))
        print(json.dumps(result) if args.json else bench.format_results(result))
        return 0
    if args.what == "linux-boot":
        if not (args.kernel and args.initrd):
            raise PyvmmError("bench linux-boot: give --kernel and --initrd "
                             "(python3 scripts/fetch_kernel.py and scripts/mkinitramfs.py print them)")
        try:
            result = benchmarks.linux_boot(args.kernel, args.initrd, repeats=args.repeats)
        except RuntimeError as e:
            raise PyvmmError(f"bench linux-boot: {e}")
        print(json.dumps(result) if args.json else
              f"to /init: pyvmm {result['pyvmm_s']} s, QEMU TCG {result['qemu_tcg_s']} s ({result['ratio']}x)\n"
              f"  decompressor in the guest for both: pyvmm {result['pyvmm_guest_decompress_s']} s "
              f"({result['ratio_both_guest_decompress']}x)\n"
              f"  kernel decompressed on the host for both (QEMU: PVH entry): QEMU TCG "
              f"{result['qemu_tcg_vmlinux_s']} s ({result['ratio_both_host_decompress']}x)")
        return 0
    if args.what == "mmu":
        result = benchmarks.mmu_modes(iters=args.iters or 20_000, repeats=args.repeats)
        if args.json:
            print(json.dumps(result))
            return 0
        print(f"{result['guest']}:")
        for mode in ("ept", "shadow"):
            row = result[mode]
            fill = f"{row['fill_ns']} ns per INVLPG+touch"
            if "fill_exit_ns" in row:
                fill += f" (the #PF fill exit alone {row['fill_exit_ns']} ns)"
            print(f"  {mode:<7} {row['exits']:>7} exits {row['seconds']:>8} s   translation fill: {fill}")
        r = result["shadow_vs_ept"]
        print(f"  shadow/ept: {r['exits']}x exits, {r['seconds']}x time, {r['fill']}x per fill")
        return 0
    if args.what == "exits":
        result = benchmarks.exit_costs(iters=args.iters or 20_000, repeats=args.repeats)
    else:
        result = benchmarks.guest_speed(iters=args.iters or 20_000_000, repeats=args.repeats)
    if args.json:
        print(json.dumps(result))
    elif args.what == "exits":
        print(f"{'exit':<12} {'pyvmm ns':>10} {'floor ns':>10}  floor")
        for name, row in result.items():
            extra = f" (Python handler path {row['python_exit_ns']} ns)" if "python_exit_ns" in row else ""
            print(f"{name:<12} {row['exit_ns']:>10} {row['floor_ns']:>10}  {row['floor']}{extra}")
    else:
        print(f"pyvmm {result['pyvmm_s']} s, bare Unicorn {result['bare_unicorn_s']} s: "
              f"{result['speed_vs_bare']:.0%} of bare speed ({result['iters']} iterations)")
    return 0


def _breaks(text):
    return set(_names(text, SHORT_NAMES, "--break"))


def _config(args, console):
    from pyvmm.machine import VmConfig
    return VmConfig(kernel=args.kernel, initrd=args.initrd, cmdline=args.cmdline, memory=args.memory,
                    exception_bitmap=_exception_bitmap(args.exceptions), rdtsc_exiting=args.rdtsc_exiting,
                    console=console, mmu=args.mmu, decompress=args.decompress, pv=args.pv, disks=args.disk,
                    nets=args.net,
                    # an interactive `boot` types into COM1; step reads its commands from stdin
                    stdin=args.command == "boot" and sys.stdin.isatty())


def describe_exit(vcpu, ex):
    """(instruction text, qualification text) for a trace line."""
    from pyvmm.cpu.decode import decode
    from pyvmm.cpu.exits import ExitReason, decode_cr_qualification, decode_io_qualification
    insn = ""
    if ex.insn_len:
        try:
            i = decode(vcpu.mem, vcpu.paging(), ex.rip, vcpu._bits())
            insn = i.text if i else "?"
        except PyvmmError:
            insn = "?"
    q = ""
    if ex.reason == ExitReason.IO_INSTRUCTION:
        d = decode_io_qualification(ex.qualification)
        q = (f"port={d['port']:#x} size={d['size']} {'in' if d['in'] else 'out'}"
             + (" string" if d["string"] else "") + (" rep" if d["rep"] else "") + (" imm" if d["imm"] else " dx"))
    elif ex.reason == ExitReason.CR_ACCESS:
        d = decode_cr_qualification(ex.qualification)
        q = f"cr={d['cr']} access={('mov-to', 'mov-from', 'clts', 'lmsw')[d['access']]} gpr={d['gpr']}"
    elif ex.reason == ExitReason.EXCEPTION_NMI:
        d = decode_intr_info(ex.intr_info)
        q = f"vector={d['vector']} ({EXCEPTION_NAMES.get(d['vector'], '?')}) type={d['type']}"
        if d["error_valid"]:
            q += f" error={ex.intr_error:#x}"
        if d["vector"] == 14:
            q += f" cr2={ex.gla:#x}"
    elif ex.reason == ExitReason.INVLPG:
        q = f"linear={ex.gla:#x}"
    return insn, q


def _trace_observer(as_json, out):
    def observer(vcpu, ex, res, ns):
        insn, q = describe_exit(vcpu, ex)
        if as_json:
            out.write(json.dumps({"seq": ex.seq, "reason": ex.reason.name, "reason_number": int(ex.reason),
                                  "sdm_name": ex.reason.sdm_name, "rip": ex.rip, "insn": insn,
                                  "qualification": ex.qualification, "decoded": q, "action": res.describe(),
                                  "ns": ns}) + "\n")
        else:
            out.write(f"{ex.seq:6d} {ex.reason.name}({int(ex.reason)}) rip={ex.rip:#x} [{insn}] {q} -> {res.describe()}\n")
        out.flush()
    return observer


def print_stats(vcpu, out):
    out.write(f"{'exit reason':<28} {'count':>9} {'mean ns':>10}\n")
    for reason, count, mean in vcpu.stats.rows():
        out.write(f"{reason.name + '(' + str(int(reason)) + ')':<28} {count:>9} {mean:>10.0f}\n")
    out.write(f"{'total':<28} {vcpu.stats.total:>9}\n")
    out.write(f"events delivered to the guest IDT: {vcpu.events_delivered} (external interrupts {vcpu.irqs_injected})\n")


def _receive(args, machine_cls):
    """The Machine a live migration to ``args.listen`` brings (built when the stream
    begins, its pages written in as they arrive; runnable once it arrived whole)."""
    print(f"pyvmm: waiting for a migration on {args.listen}", file=sys.stderr, flush=True)
    machine, stats = machine_cls.receive_migration(args.listen, timeout=args.timeout)
    print(f"pyvmm: received the VM from {stats['peer']}: {stats['pages']} pages in {stats['rounds']} rounds, "
          f"{stats['total_time_s']} s", file=sys.stderr, flush=True)
    return machine


def _run_controlled(machine, path):
    """Run ``machine`` with a control server on ``path`` until the VM shuts down."""
    from pyvmm.control.machine_target import MachineTarget
    from pyvmm.control.server import ControlServer
    target = MachineTarget(machine)
    with ControlServer(path, target) as server:
        target.attach(server.emit)
        target.start()
        try:
            while not target.done.wait(0.5):
                pass
        except KeyboardInterrupt:
            if target.status()["status"] != "shutdown":
                target.quit()
            return 130, "interrupted"
    return target.result


def _boot_domains(args):
    """`boot --pv K1 --domain K2 ...`: several PV guests in one process (pv/hypervisor.py)."""
    from pyvmm.pv.hypervisor import DomainSpec, boot_domains, parse_domain_spec
    try:
        if not args.pv:
            raise PyvmmError("--domain needs --pv (only PV guests share a domain 0)")
        if args.control:
            raise PyvmmError("--control serves one VM; it cannot be used with --domain")
        specs = [DomainSpec(kernel=args.kernel, cmdline=args.cmdline, memory=args.memory, initrd=args.initrd,
                            nets=args.net, disks=args.disk)]
        specs += [parse_domain_spec(d) for d in args.domain]
        return boot_domains(specs, mmu=args.mmu, stats=args.stats)
    except PyvmmError as e:
        print(f"pyvmm: {e}", file=sys.stderr)
        return 2


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["ctl"]:
        from pyvmm.control.client import ctl_main
        return ctl_main(argv[1:])
    args = _parser().parse_args(argv)
    if args.command == "img":
        return run_img(args)
    if args.command == "bench":
        try:
            return _bench(args)
        except PyvmmError as e:
            print(f"pyvmm: {e}", file=sys.stderr)
            return 2
    if args.command == "boot" and args.domain:
        return _boot_domains(args)
    from pyvmm.machine import Machine
    console = None
    if args.command in ("trace", "step") and not getattr(args, "json", False):
        console = lambda data: sys.stdout.write(data.decode(errors="replace"))  # noqa: E731
    try:
        if args.command == "restore":
            machine = Machine.restore(args.file)
        elif args.command == "receive":
            machine = _receive(args, Machine)
        else:
            machine = Machine(_config(args, console))
    except PyvmmError as e:
        print(f"pyvmm: {e}", file=sys.stderr)
        return 2
    if args.command == "trace":
        machine.add_observer(_trace_observer(args.json, sys.stdout))
    elif args.command == "step":
        from pyvmm.stepper import Stepper
        try:
            breaks = _breaks(args.breaks)
        except PyvmmError as e:
            print(f"pyvmm: {e}", file=sys.stderr)
            machine.close()
            return 2
        machine.add_observer(Stepper(sys.stdin, sys.stdout, describe_exit, print_stats, breaks))
    try:
        if getattr(args, "control", None):
            status, reason = _run_controlled(machine, args.control)
        else:
            status, reason = machine.run()
    except KeyboardInterrupt:
        status, reason = 130, "interrupted"
    except PyvmmError as e:
        machine.close()
        print(f"pyvmm: {e}", file=sys.stderr)
        return 2
    sys.stdout.flush()
    if args.stats:
        print_stats(machine.vcpu, sys.stderr)
    if status != 0:
        print(f"pyvmm: guest stopped: {reason}", file=sys.stderr)
        for ex, res in list(machine.vcpu.last_exits)[-8:]:
            print(f"  last exits: #{ex.seq} {ex.reason.name} rip={ex.rip:#x} -> {res.describe()}", file=sys.stderr)
    else:
        print(f"pyvmm: {reason}", file=sys.stderr)
    return min(status, 255) if status else 0


if __name__ == "__main__":
    sys.exit(main())
