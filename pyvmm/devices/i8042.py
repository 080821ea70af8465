"""The i8042 keyboard controller (ports 0x60 data, 0x64 status/command) with an AT keyboard.

Responsibility: answer what a driver sends to a PC/AT-compatible 8042 and to the
keyboard behind it, so that a guest probing the controller (Linux's
drivers/input/serio/i8042.c, atkbd, psmouse) gets its replies at once instead of
polling an absent device until its timeouts expire. No keys are ever typed: the
keyboard only answers commands. Commands, status and command-byte (CTR) bits as
the IBM PC/AT Technical Reference ("Keyboard Controller") documents them and as
Linux's drivers/input/serio/i8042.h names them.

The controller:
- status (read 0x64): bit 0 OBF (a byte waits at 0x60), bit 1 IBF (always 0: every
  write is consumed at once), bit 2 SYS (CTR bit 2), bit 3 CMD/DATA (1 = last write
  went to 0x64), bit 4 keyboard not inhibited (the key lock is always open), bit 5
  AUXDATA (the waiting byte came from the aux port), bit 6 TIMEOUT (the aux device did
  not answer), bit 7 parity error (never);
- commands (write 0x64): 0x20-0x3F read controller RAM byte n (0x20: the CTR),
  0x60-0x7F write it (next byte at 0x60), 0xA7/0xA8 disable/enable the aux interface
  (CTR bit 5), 0xA9/0xAB aux/keyboard interface test (0x00: no error), 0xAA self test
  (0x55; sets SYS), 0xAD/0xAE disable/enable the keyboard interface (CTR bit 4),
  0xD0/0xD1 read/write the output port, 0xD2/0xD3 write the next byte back as if it
  came from the keyboard/aux port (loopback), 0xD4 send the next byte to the aux
  device, 0xF0-0xFF pulse the output port lines whose bit is 0 in the low nibble.
  Pulsing line 0 (0xFE, the usual one), or writing the output port with bit 0 clear,
  is the CPU reset: ``on_reset(PowerEvent("reset", ...))`` is called once per request.
  Any other command is ignored (counted in ``ignored_commands``); a command cancels a
  previous command's wait for its data byte.
- interrupts: the controller drives IRQ 1 while the output buffer holds a byte that
  is not aux data and CTR bit 0 is set, IRQ 12 while it holds aux data and CTR bit 1
  is set; ``irq_kbd(level)`` / ``irq_aux(level)`` are called exactly when those levels
  change. Reading 0x60 drops the level; the next queued byte raises it again, so an
  edge-triggered PIC sees one edge per byte.

The keyboard (bytes written to 0x60 while no controller command waits for data):
0xFF reset -> 0xFA 0xAA, 0xF2 identify -> 0xFA 0xAB 0x83, 0xEE echo -> 0xEE, 0xFE
resend -> the last byte it sent, 0xED LEDs / 0xF3 typematic / 0xF0 scan code set each
take one argument and ACK (0xFA) both bytes (0xF0 0x00 reports the set, 2 by default;
a set other than 1-3 is refused with 0xFE), 0xF4/0xF5 enable/disable scanning, every
other byte -> 0xFA. The keyboard keeps its replies (at most KBD_BUFFER bytes; more
are dropped and counted in ``kbd_overruns``) while the controller holds its interface
disabled (CTR bit 4), and sends them once it is enabled.

The aux (mouse) port: the controller has one, and nothing is plugged into it. The
controller-internal parts work (enable/disable, interface test, 0xD3 loopback, IRQ
12), so Linux finds an AUX port and no MUX (the loopback echoes 0xA4 unchanged); a byte
sent to the device with 0xD4 is answered the way a PS/2 controller reports a device
that never clocks: 0xFE with TIMEOUT and AUXDATA set. psmouse's first command thus
fails at once instead of waiting for its timeout.

Invariants: the output queue and the keyboard's buffer hold at most OUT_BUFFER and
KBD_BUFFER bytes, whatever the guest writes; every port write changes only this
device's state (plus at most one reset request); no guest byte raises an error.
Approximations: translation (CTR bit 6) is stored and read back but bytes pass
untranslated (only replies flow, never scan codes), and the initial CTR (0x34: SYS,
both interfaces disabled, no interrupts, no translation) stands in for what a BIOS
would leave.
"""

from collections import deque

from pyvmm.devices.power import PowerEvent
from pyvmm.errors import MigrationStreamError

DATA_PORT = 0x60
COMMAND_PORT = 0x64   # also the status port on read

# Status register (drivers/input/serio/i8042.h, I8042_STR_*).
STR_OBF = 0x01
STR_IBF = 0x02
STR_SYS = 0x04
STR_CMDDAT = 0x08
STR_KEYLOCK = 0x10    # 1 = keyboard not inhibited
STR_AUXDATA = 0x20
STR_TIMEOUT = 0x40
STR_PARITY = 0x80

# Controller command byte, RAM byte 0 (I8042_CTR_*).
CTR_KBDINT = 0x01
CTR_AUXINT = 0x02
CTR_SYS = 0x04
CTR_IGNKEYLOCK = 0x08
CTR_KBDDIS = 0x10
CTR_AUXDIS = 0x20
CTR_XLATE = 0x40
CTR_MASK = 0x7F       # bit 7 is reserved and reads 0
INITIAL_CTR = CTR_SYS | CTR_KBDDIS | CTR_AUXDIS

# Controller commands (low byte of Linux's I8042_CMD_*, plus the PC/AT ones it omits).
CMD_READ_RAM = 0x20           # 0x20-0x3F
CMD_WRITE_RAM = 0x60          # 0x60-0x7F
RAM_SIZE = 0x20
CMD_AUX_DISABLE = 0xA7
CMD_AUX_ENABLE = 0xA8
CMD_AUX_TEST = 0xA9
CMD_SELF_TEST = 0xAA
CMD_KBD_TEST = 0xAB
CMD_KBD_DISABLE = 0xAD
CMD_KBD_ENABLE = 0xAE
CMD_READ_OUTPUT_PORT = 0xD0
CMD_WRITE_OUTPUT_PORT = 0xD1
CMD_KBD_LOOP = 0xD2
CMD_AUX_LOOP = 0xD3
CMD_AUX_SEND = 0xD4
CMD_PULSE = 0xF0              # 0xF0-0xFF: pulse lines whose bit is 0 in bits 3-0
SELF_TEST_OK = 0x55
INTERFACE_TEST_OK = 0x00

# Output port: bit 0 = CPU reset line (active low), bit 1 = A20 gate.
OUTPUT_RESET_LINE = 0x01
OUTPUT_A20 = 0x02
INITIAL_OUTPUT_PORT = 0xCF    # reset line high, A20 on, IRQ/clock lines idle

# Keyboard commands and replies (Linux's drivers/input/keyboard/atkbd.c, ATKBD_*).
KBD_SET_LEDS = 0xED
KBD_ECHO = 0xEE
KBD_SCANCODE_SET = 0xF0
KBD_IDENTIFY = 0xF2
KBD_TYPEMATIC = 0xF3
KBD_ENABLE = 0xF4
KBD_DISABLE = 0xF5
KBD_DEFAULTS = 0xF6
KBD_RESEND = 0xFE
KBD_RESET = 0xFF
KBD_ACK = 0xFA
KBD_BAT_OK = 0xAA
KBD_RESEND_REPLY = 0xFE
KBD_ID = (0xAB, 0x83)         # an MF2 keyboard
KBD_TAKES_ARGUMENT = (KBD_SET_LEDS, KBD_SCANCODE_SET, KBD_TYPEMATIC)
DEFAULT_SCANCODE_SET = 2
DEFAULT_TYPEMATIC = 0x2B      # 10.9 characters/s, 500 ms delay
AUX_NO_DEVICE = 0xFE          # what 0xD4 yields with no device attached

KBD_BUFFER = 16               # a keyboard's own FIFO (Linux: I8042_BUFFER_SIZE)
OUT_BUFFER = 16               # controller bytes queued behind the output buffer


class I8042:
    """The keyboard controller on ports 0x60/0x64, an AT keyboard, an empty aux port."""

    name = "i8042 keyboard controller"
    ports = (DATA_PORT, COMMAND_PORT)

    def __init__(self, irq_kbd, irq_aux, on_reset):
        self.irq_kbd = irq_kbd
        self.irq_aux = irq_aux
        self.on_reset = on_reset
        self._kbd_level = 0
        self._aux_level = 0
        self.reset()

    def reset(self):
        """Power-on state: INITIAL_CTR, empty buffers, keyboard at its defaults."""
        self.ram = bytearray(RAM_SIZE)
        self.ram[0] = INITIAL_CTR
        self.output_port = INITIAL_OUTPUT_PORT
        self.out = deque()             # (byte, STR_AUXDATA/STR_TIMEOUT flags); head = OBF
        self.pending_command = None    # controller command waiting for its data byte
        self.last_was_command = False
        self.last_read = 0
        self.ignored_commands = 0
        self.out_overruns = 0
        self.kbd_overruns = 0
        self.kbd_queue = deque()
        self.kbd_argument_for = None   # keyboard command waiting for its argument
        self.kbd_last_sent = KBD_ACK
        self._kbd_defaults()
        self._update_irq()

    @property
    def ctr(self):
        return self.ram[0]

    # --- guest side -----------------------------------------------------------
    def io_read(self, port, size):
        if port == COMMAND_PORT:
            return self.status()
        if self.out:
            self.last_read = self.out.popleft()[0]
            self._drive(0, 0)       # the line drops before the next byte loads
            self._pump_keyboard()
            self._update_irq()
        return self.last_read  # an empty buffer reads its last byte again

    def io_write(self, port, size, value):
        value &= 0xFF
        if port == COMMAND_PORT:
            self.last_was_command = True
            self.pending_command = None
            self._command(value)
        else:
            self.last_was_command = False
            command, self.pending_command = self.pending_command, None
            if command is None:
                self._keyboard_receive(value)
            else:
                self._command_data(command, value)
        self._pump_keyboard()
        self._update_irq()

    def status(self):
        value = STR_KEYLOCK | (self.ctr & CTR_SYS)
        if self.last_was_command:
            value |= STR_CMDDAT
        if self.out:
            value |= STR_OBF | self.out[0][1]
        return value

    # --- controller -------------------------------------------------------------
    def _command(self, cmd):
        if CMD_READ_RAM <= cmd < CMD_READ_RAM + RAM_SIZE:
            self._output(self.ram[cmd - CMD_READ_RAM])
        elif _takes_data(cmd):
            self.pending_command = cmd
        elif cmd == CMD_AUX_DISABLE:
            self.ram[0] |= CTR_AUXDIS
        elif cmd == CMD_AUX_ENABLE:
            self.ram[0] &= ~CTR_AUXDIS
        elif cmd in (CMD_AUX_TEST, CMD_KBD_TEST):
            self._output(INTERFACE_TEST_OK)
        elif cmd == CMD_SELF_TEST:
            self.ram[0] |= CTR_SYS
            self._output(SELF_TEST_OK)
        elif cmd == CMD_KBD_DISABLE:
            self.ram[0] |= CTR_KBDDIS
        elif cmd == CMD_KBD_ENABLE:
            self.ram[0] &= ~CTR_KBDDIS
        elif cmd == CMD_READ_OUTPUT_PORT:
            self._output(self.output_port)
        elif cmd >= CMD_PULSE:
            if not cmd & OUTPUT_RESET_LINE:
                self._request_reset(f"i8042 command {cmd:#04x} pulsed the CPU reset line")
        else:
            self.ignored_commands += 1

    def _command_data(self, cmd, value):
        if CMD_WRITE_RAM <= cmd < CMD_WRITE_RAM + RAM_SIZE:
            self.ram[cmd - CMD_WRITE_RAM] = value & CTR_MASK if cmd == CMD_WRITE_RAM else value
        elif cmd == CMD_WRITE_OUTPUT_PORT:
            self.output_port = value
            if not value & OUTPUT_RESET_LINE:
                self._request_reset(f"i8042 output port written with {value:#04x} "
                                    f"(CPU reset line low)")
        elif cmd == CMD_KBD_LOOP:
            self._output(value)
        elif cmd == CMD_AUX_LOOP:
            self._output(value, STR_AUXDATA)
        else:  # CMD_AUX_SEND: no device on the aux port ever clocks the byte in
            self._output(AUX_NO_DEVICE, STR_AUXDATA | STR_TIMEOUT)

    def _output(self, byte, flags=0):
        if len(self.out) >= OUT_BUFFER:
            self.out_overruns += 1
            return
        self.out.append((byte, flags))

    def _request_reset(self, reason):
        self.on_reset(PowerEvent("reset", 0, f"guest reset the machine ({reason})"))

    # --- keyboard ---------------------------------------------------------------
    def _kbd_defaults(self):
        self.kbd_scanning = True
        self.kbd_leds = 0
        self.kbd_scancode_set = DEFAULT_SCANCODE_SET
        self.kbd_typematic = DEFAULT_TYPEMATIC

    def _keyboard_receive(self, byte):
        command, self.kbd_argument_for = self.kbd_argument_for, None
        if command is not None:
            self._keyboard_argument(command, byte)
        elif byte == KBD_RESET:
            self._kbd_defaults()
            self.kbd_queue.clear()
            self._keyboard_send(KBD_ACK, KBD_BAT_OK)
        elif byte == KBD_IDENTIFY:
            self._keyboard_send(KBD_ACK, *KBD_ID)
        elif byte == KBD_ECHO:
            self._keyboard_send(KBD_ECHO)
        elif byte == KBD_RESEND:
            self._keyboard_send(self.kbd_last_sent)
        else:
            if byte in KBD_TAKES_ARGUMENT:
                self.kbd_argument_for = byte
            elif byte == KBD_ENABLE:
                self.kbd_scanning = True
            elif byte in (KBD_DISABLE, KBD_DEFAULTS):
                self._kbd_defaults()
                self.kbd_scanning = byte == KBD_DEFAULTS
            self._keyboard_send(KBD_ACK)

    def _keyboard_argument(self, command, arg):
        if command == KBD_SET_LEDS:
            self.kbd_leds = arg & 0x07
        elif command == KBD_TYPEMATIC:
            self.kbd_typematic = arg & 0x7F
        elif arg == 0:  # KBD_SCANCODE_SET, query
            self._keyboard_send(KBD_ACK, self.kbd_scancode_set)
            return
        elif arg <= 3:
            self.kbd_scancode_set = arg
        else:
            self._keyboard_send(KBD_RESEND_REPLY)
            return
        self._keyboard_send(KBD_ACK)

    def _keyboard_send(self, *data):
        for byte in data:
            if len(self.kbd_queue) >= KBD_BUFFER:
                self.kbd_overruns += 1
                continue
            self.kbd_queue.append(byte)
            self.kbd_last_sent = byte

    def _pump_keyboard(self):
        """Move one keyboard byte into an empty output buffer if the interface is on."""
        if self.kbd_queue and not self.out and not self.ctr & CTR_KBDDIS:
            self.out.append((self.kbd_queue.popleft(), 0))

    # --- interrupts ---------------------------------------------------------------
    def _update_irq(self):
        flags = self.out[0][1] if self.out else None
        kbd = int(flags is not None and not flags & STR_AUXDATA and bool(self.ctr & CTR_KBDINT))
        aux = int(flags is not None and bool(flags & STR_AUXDATA) and bool(self.ctr & CTR_AUXINT))
        self._drive(kbd, aux)

    def _drive(self, kbd, aux):
        if kbd != self._kbd_level:
            self._kbd_level = kbd
            self.irq_kbd(kbd)
        if aux != self._aux_level:
            self._aux_level = aux
            self.irq_aux(aux)

    # --- migration ----------------------------------------------------------------
    def save(self):
        """The device state as plain values (ints, bools, lists, None)."""
        return {
            "ram": list(self.ram),
            "output_port": self.output_port,
            "out": [[byte, flags] for byte, flags in self.out],
            "pending_command": self.pending_command,
            "last_was_command": self.last_was_command,
            "last_read": self.last_read,
            "kbd_queue": list(self.kbd_queue),
            "kbd_argument_for": self.kbd_argument_for,
            "kbd_last_sent": self.kbd_last_sent,
            "kbd_scanning": self.kbd_scanning,
            "kbd_leds": self.kbd_leds,
            "kbd_scancode_set": self.kbd_scancode_set,
            "kbd_typematic": self.kbd_typematic,
        }

    def restore(self, state):
        """Load a ``save()`` dict; a malformed one raises MigrationStreamError and
        changes nothing. Interrupt lines are driven to the restored levels."""
        ram = _byte_list(state, "ram", RAM_SIZE, RAM_SIZE)
        out = _field(state, "out", list)
        if len(out) > OUT_BUFFER:
            raise MigrationStreamError(f"i8042 state: 'out' holds {len(out)} bytes, at most {OUT_BUFFER}")
        for entry in out:
            if (not isinstance(entry, (list, tuple)) or len(entry) != 2 or not _is_byte(entry[0])
                    or not _is_byte(entry[1]) or entry[1] & ~(STR_AUXDATA | STR_TIMEOUT)):
                raise MigrationStreamError(f"i8042 state: 'out' entry {entry!r} is not [byte, flags]")
        pending = state.get("pending_command")
        if pending is not None and not (_is_byte(pending) and _takes_data(pending)):
            raise MigrationStreamError(f"i8042 state: pending_command {pending!r} takes no data byte")
        argument_for = state.get("kbd_argument_for")
        if argument_for is not None and argument_for not in KBD_TAKES_ARGUMENT:
            raise MigrationStreamError(f"i8042 state: kbd_argument_for {argument_for!r} takes no argument")
        kbd_queue = _byte_list(state, "kbd_queue", 0, KBD_BUFFER)
        scalars = {key: _byte(state, key) for key in
                   ("output_port", "last_read", "kbd_last_sent", "kbd_leds", "kbd_typematic")}
        scancode_set = _byte(state, "kbd_scancode_set")
        if not 1 <= scancode_set <= 3:
            raise MigrationStreamError(f"i8042 state: kbd_scancode_set {scancode_set} is not 1-3")
        flags = {key: _field(state, key, bool) for key in ("last_was_command", "kbd_scanning")}

        self.ram = bytearray(ram)
        self.ram[0] &= CTR_MASK
        self.out = deque((byte, fl) for byte, fl in out)
        self.pending_command = pending
        self.kbd_queue = deque(kbd_queue)
        self.kbd_argument_for = argument_for
        self.kbd_scancode_set = scancode_set
        for key, value in {**scalars, **flags}.items():
            setattr(self, key, value)
        self.kbd_leds &= 0x07
        self.kbd_typematic &= 0x7F
        self._update_irq()


def _takes_data(cmd):
    """Whether controller command ``cmd`` takes a data byte at port 0x60."""
    return (CMD_WRITE_RAM <= cmd < CMD_WRITE_RAM + RAM_SIZE
            or cmd in (CMD_WRITE_OUTPUT_PORT, CMD_KBD_LOOP, CMD_AUX_LOOP, CMD_AUX_SEND))


def _is_byte(value):
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 0xFF


def _field(state, key, kind):
    if not isinstance(state, dict) or key not in state:
        raise MigrationStreamError(f"i8042 state: field {key!r} is missing")
    value = state[key]
    if not isinstance(value, kind):
        raise MigrationStreamError(f"i8042 state: field {key!r} is {value!r}, not a {kind.__name__}")
    return value


def _byte(state, key):
    value = _field(state, key, int)
    if not _is_byte(value):
        raise MigrationStreamError(f"i8042 state: field {key!r} is {value!r}, not a byte 0-255")
    return value


def _byte_list(state, key, min_len, max_len):
    value = _field(state, key, list)
    if not min_len <= len(value) <= max_len or not all(_is_byte(b) for b in value):
        raise MigrationStreamError(f"i8042 state: field {key!r} must be {min_len}-{max_len} bytes, "
                                   f"got {value!r}")
    return value
