"""The lab stepper: stop at VM exits and let a person (or a script) look around.

Runs as an exit observer, inside the exit: the guest is suspended exactly at the
trapping instruction while commands are read, so registers and memory are what
the handler saw. Commands come from any text stream (stdin in ``pyvmm step``), one
per line, so a test or a lab sheet can drive a session:

    next | n            resume until the next exit that stops
    continue | c        resume and stop no more
    regs                general registers, RIP, RFLAGS, control registers, segments
    mem ADDR LEN        hex dump of guest-linear memory
    pmem ADDR LEN       hex dump of guest-physical memory
    disas [ADDR] [N]    disassemble N instructions (default: at RIP, 5)
    exits               exits so far by reason, with mean handling time
    quit | q            stop the VM
    help

End of input behaves like ``continue``.
"""

import shlex

from pyvmm.cpu.decode import disassemble
from pyvmm.cpu.state import GPRS, SEG_NAMES
from pyvmm.errors import PyvmmError

HELP = __doc__.split("\n\n")[1]


class Stepper:
    """Observer that stops at exits whose reason is in ``breaks`` (all when empty)."""

    def __init__(self, commands, out, describe, stats_printer, breaks=frozenset()):
        self.commands = commands          # a text stream: one command per line
        self.out = out
        self.describe = describe          # (vcpu, exit) -> (insn text, qualification text)
        self.stats_printer = stats_printer
        self.breaks = frozenset(breaks)
        self.stepping = True

    def __call__(self, vcpu, ex, res, ns):
        if not self.stepping or (self.breaks and ex.reason not in self.breaks):
            return
        insn, q = self.describe(vcpu, ex)
        self.out.write(f"exit #{ex.seq}: {ex.reason.name} ({int(ex.reason)}, {ex.reason.sdm_name}) "
                       f"rip={ex.rip:#x} [{insn}] {q}\n  handler: {res.describe()}\n")
        while True:
            self.out.write("(pyvmm) ")
            self.out.flush()
            line = self.commands.readline()
            if not line:                       # end of input: run on
                self.out.write("\n")
                self.stepping = False
                return
            try:
                words = shlex.split(line)
            except ValueError as e:
                self.out.write(f"cannot parse {line.strip()!r}: {e}\n")
                continue
            if not words:
                continue
            cmd, args = words[0], words[1:]
            try:
                if cmd in ("n", "next", "s", "step"):
                    return
                if cmd in ("c", "continue"):
                    self.stepping = False
                    return
                if cmd in ("q", "quit"):
                    vcpu.request_stop(1, "stopped by the user (quit)")
                    self.stepping = False
                    return
                handler = getattr(self, "cmd_" + cmd, None)
                if handler is None:
                    self.out.write(f"unknown command {cmd!r}; try help\n")
                else:
                    handler(vcpu, args)
            except (PyvmmError, ValueError, IndexError) as e:
                self.out.write(f"{cmd}: {e}\n")

    def cmd_help(self, vcpu, args):
        self.out.write(HELP + "\n")

    def cmd_regs(self, vcpu, args):
        regs, cpu = vcpu.regs, vcpu.cpu
        names = GPRS + ("rip", "rflags")
        for i in range(0, len(names), 4):
            self.out.write("  ".join(f"{n:>6}={getattr(regs, n):016x}" for n in names[i:i + 4]) + "\n")
        self.out.write(f"   cr0={cpu.get_cr(0):#x} cr2={cpu.get_cr(2):#x} cr3={cpu.get_cr(3):#x} "
                       f"cr4={cpu.get_cr(4):#x} efer={cpu.efer:#x} cpl={cpu.cpl}\n")
        for name in SEG_NAMES:
            s = cpu.get_segment(name)
            self.out.write(f"    {name}={s.selector:04x} base={s.base:#x} limit={s.limit:#x} flags={s.flags:#x}\n")
        for name in ("gdtr", "idtr", "tr"):
            t = cpu.get_table(name)
            self.out.write(f"  {name}: base={t.base:#x} limit={t.limit:#x}" +
                           (f" selector={t.selector:#x}" if name == "tr" else "") + "\n")

    def _dump(self, base, data):
        for off in range(0, len(data), 16):
            chunk = data[off:off + 16]
            text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
            self.out.write(f"  {base + off:016x}  {chunk.hex(' '):<47}  {text}\n")

    def cmd_mem(self, vcpu, args):
        addr, length = int(args[0], 0), int(args[1], 0) if len(args) > 1 else 64
        self._dump(addr, vcpu.read_linear(addr, min(length, 4096)))

    def cmd_pmem(self, vcpu, args):
        addr, length = int(args[0], 0), int(args[1], 0) if len(args) > 1 else 64
        self._dump(addr, vcpu.mem.read(addr, min(length, 4096)))

    def cmd_disas(self, vcpu, args):
        addr = int(args[0], 0) if args else vcpu.regs.rip
        count = int(args[1], 0) if len(args) > 1 else 5
        insns = disassemble(vcpu.mem, vcpu.paging(), addr, min(count, 100), vcpu._bits())
        if not insns:
            self.out.write(f"  nothing decodable at {addr:#x}\n")
        for i in insns:
            marker = "=>" if i.address == vcpu.regs.rip else "  "
            self.out.write(f"{marker} {i.address:#x}: {i.raw.hex(' '):<30} {i.text}\n")

    def cmd_exits(self, vcpu, args):
        self.stats_printer(vcpu, self.out)
