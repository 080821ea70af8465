"""The real-time clock and CMOS RAM: a Motorola MC146818A at ports 0x70 (index) / 0x71.

Responsibility: the 128 bytes of CMOS the guest addresses through the index register,
with the clock registers computed from the host's wall clock, the status registers
A-D, the NMI mask bit of the index port, and the PC/AT memory-size bytes. References
are to the Motorola MC146818A datasheet ("Address Map", "Register A" ... "Register
D", "Update Cycle") and the IBM PC/AT CMOS map for bytes 0x0E-0x3F.

Invariants:
- the time registers (0x00, 0x02, 0x04, 0x06-0x09) and the century byte (0x32) are a
  pure function of ``wallclock() + offset``, encoded as register B says (DM: binary or
  BCD; 24/12: in 12-hour mode bit 7 of the hours is PM); ``offset`` starts at 0 and
  changes only when the guest sets the clock. All fields of one read come from the
  same whole second of that time;
- with register B.SET = 1 the time registers are frozen (the update cycle is inhibited)
  and the guest writes them; clearing SET, or writing a time register while SET = 0,
  sets the clock from the registers (an impossible date is ignored);
- register A.UIP is 1 only during the last 2228 us of a second (244 us before the
  update plus the 1984 us update itself) and never while SET = 1; with a wall clock
  returning whole seconds it is always 0. So UIP = 0 guarantees the registers will not
  change for at least 244 us, as on the chip;
- register C reads clear it; register D always reads VRT = 1 (valid RAM and time);
- bit 7 of an index write is the NMI mask (``nmi_disabled``); the index is 7 bits.

Not modelled: no interrupt is ever raised on IRQ 8. The periodic flag (PF) is never
set; UF is set in register C when at least one update (second boundary) happened
since the last read of C, and AF when, in addition, the alarm matches the current
time; IRQF follows them and the enable bits. Changing DM or 24/12 takes effect on
the next read (the chip would need the time rewritten). The divider bits of
register A are stored only.

Save/restore: ``save()`` gives the 128 bytes, the index/NMI latch, the guest's offset
from the host's wall clock and the second of the last register C read. The clock is
the host's wall clock plus ``offset`` on either side, as a real RTC keeps running
while the machine is off.
"""

import datetime
import math

from pyvmm.migrate.state import StateFields
from pyvmm.mm.layout import KiB, MiB

INDEX_PORT = 0x70
DATA_PORT = 0x71
NMI_DISABLE = 0x80
CMOS_SIZE = 128

# Clock registers.
SECONDS, SECONDS_ALARM, MINUTES, MINUTES_ALARM, HOURS, HOURS_ALARM = range(6)
DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR = 6, 7, 8, 9
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
CENTURY = 0x32  # IBM PC/AT convention (ACPI FADT "CENTURY" points here in QEMU)
TIME_REGISTERS = (SECONDS, MINUTES, HOURS, DAY_OF_WEEK, DAY_OF_MONTH, MONTH, YEAR, CENTURY)
# Register A
REG_A_UIP = 0x80
REG_A_DEFAULT = 0x26      # DV = 010 (32.768 kHz time base), RS = 0110 (1.024 kHz)
UPDATE_WINDOW_S = 0.002228  # t_BUC (244 us) + update cycle time (1984 us)
# Register B
REG_B_SET = 0x80
REG_B_PIE, REG_B_AIE, REG_B_UIE = 0x40, 0x20, 0x10
REG_B_DM = 0x04           # 1 = binary, 0 = BCD
REG_B_24H = 0x02          # 1 = 24-hour mode
REG_B_DEFAULT = REG_B_24H
# Register C
REG_C_IRQF, REG_C_PF, REG_C_AF, REG_C_UF = 0x80, 0x40, 0x20, 0x10
# Register D
REG_D_VRT = 0x80
HOUR_PM = 0x80
ALARM_DONT_CARE = 0xC0     # an alarm byte with bits 7-6 set matches any value
# IBM PC/AT memory-size bytes.
BASE_MEMORY_LO, BASE_MEMORY_HI = 0x15, 0x16          # KiB below 1 MiB
EXT_MEMORY_LO, EXT_MEMORY_HI = 0x17, 0x18            # KiB above 1 MiB (POST copy)
EXT_MEMORY2_LO, EXT_MEMORY2_HI = 0x30, 0x31          # KiB above 1 MiB
MEM_ABOVE_16M_LO, MEM_ABOVE_16M_HI = 0x34, 0x35      # 64 KiB units above 16 MiB
CHECKSUM_HI, CHECKSUM_LO = 0x2E, 0x2F                # sum of bytes 0x10-0x2D
BASE_MEMORY_KIB = 640


class Mc146818:
    """CMOS/RTC. ``wallclock()`` returns UTC epoch seconds (int or float)."""

    name = "MC146818 RTC/CMOS"
    ports = (INDEX_PORT, DATA_PORT)

    def __init__(self, wallclock, ram_size):
        self.wallclock = wallclock
        self.ram = bytearray(CMOS_SIZE)
        self.index = 0
        self.nmi_disabled = False
        self.offset = 0          # seconds the guest's clock is ahead of the host's
        self._last_flags_second = None
        self.ram[REG_A] = REG_A_DEFAULT
        self.ram[REG_B] = REG_B_DEFAULT
        self._set_memory_size(ram_size)

    def _set_memory_size(self, ram_size):
        def put16(lo, hi, value):
            value = min(max(value, 0), 0xFFFF)
            self.ram[lo] = value & 0xFF
            self.ram[hi] = value >> 8

        put16(BASE_MEMORY_LO, BASE_MEMORY_HI, BASE_MEMORY_KIB)
        put16(EXT_MEMORY_LO, EXT_MEMORY_HI, (ram_size - MiB) // KiB)
        put16(EXT_MEMORY2_LO, EXT_MEMORY2_HI, (ram_size - MiB) // KiB)
        put16(MEM_ABOVE_16M_LO, MEM_ABOVE_16M_HI, (ram_size - 16 * MiB) // (64 * KiB))
        put16(CHECKSUM_LO, CHECKSUM_HI, sum(self.ram[0x10:CHECKSUM_HI]))

    # --- save / restore -------------------------------------------------------
    def save(self):
        return {"ram": bytes(self.ram), "index": self.index, "nmi_disabled": self.nmi_disabled,
                "offset": self.offset, "last_flags_second": self._last_flags_second}

    def restore(self, state):
        """Take the state ``save`` gave; checked in full before anything changes."""
        f = StateFields(state, self.name)
        ram = bytearray(f.blob("ram", size=CMOS_SIZE))
        index = f.uint("index", CMOS_SIZE)
        nmi_disabled = f.flag("nmi_disabled")
        offset = f.integer("offset", -(1 << 40), 1 << 40)
        last = f.raw("last_flags_second")
        if last is not None:
            last = f.integer("last_flags_second", -(1 << 40), 1 << 40)
        f.done()
        self.ram, self.index, self.nmi_disabled = ram, index, nmi_disabled
        self.offset, self._last_flags_second = offset, last

    # --- guest side -----------------------------------------------------------
    def io_read(self, port, size):
        if port == INDEX_PORT:
            return 0xFF  # the index register is write-only
        return self.read_register(self.index)

    def io_write(self, port, size, value):
        if port == INDEX_PORT:
            self.index = value & 0x7F
            self.nmi_disabled = bool(value & NMI_DISABLE)
        else:
            self.write_register(self.index, value)

    def read_register(self, reg):
        if reg in TIME_REGISTERS and not self._set_bit():
            return self._time_bytes(self._now())[reg]
        if reg == REG_A:
            return (self.ram[REG_A] & 0x7F) | (REG_A_UIP if self._uip() else 0)
        if reg == REG_C:
            return self._read_flags()
        if reg == REG_D:
            return REG_D_VRT
        return self.ram[reg]

    def write_register(self, reg, value):
        if reg in TIME_REGISTERS:
            if not self._set_bit():
                self._snapshot()
                self.ram[reg] = value
                self._set_clock_from_ram()
            else:
                self.ram[reg] = value
        elif reg == REG_A:
            self.ram[REG_A] = value & 0x7F  # UIP is read-only
        elif reg == REG_B:
            self._write_b(value)
        elif reg not in (REG_C, REG_D):    # C and D are read-only
            self.ram[reg] = value

    def _write_b(self, value):
        was_set = self._set_bit()
        if value & REG_B_SET:
            value &= ~REG_B_UIE  # SET = 1 clears UIE (datasheet, register B)
            if not was_set:
                self._snapshot()  # freeze the time registers
        self.ram[REG_B] = value
        if was_set and not value & REG_B_SET:
            self._set_clock_from_ram()

    # --- the clock -----------------------------------------------------------
    def _now(self):
        return self.wallclock() + self.offset

    def _set_bit(self):
        return bool(self.ram[REG_B] & REG_B_SET)

    def _uip(self):
        if self._set_bit():
            return False
        now = self._now()
        return now - math.floor(now) >= 1 - UPDATE_WINDOW_S

    def _snapshot(self):
        for reg, value in self._time_bytes(self._now()).items():
            self.ram[reg] = value

    def _encode(self, value):
        if self.ram[REG_B] & REG_B_DM:
            return value
        return ((value // 10) << 4) | (value % 10)

    def _decode(self, value):
        if self.ram[REG_B] & REG_B_DM:
            return value
        return (value >> 4) * 10 + (value & 0x0F)

    def _time_bytes(self, now):
        """The clock registers for epoch time ``now``, encoded per register B."""
        t = datetime.datetime.fromtimestamp(math.floor(now), datetime.timezone.utc)
        enc = self._encode
        hour = t.hour
        if self.ram[REG_B] & REG_B_24H:
            hours = enc(hour)
        else:
            hours = enc(hour % 12 or 12) | (HOUR_PM if hour >= 12 else 0)
        return {
            SECONDS: enc(t.second),
            MINUTES: enc(t.minute),
            HOURS: hours,
            DAY_OF_WEEK: enc(t.isoweekday() % 7 + 1),  # 1 = Sunday
            DAY_OF_MONTH: enc(t.day),
            MONTH: enc(t.month),
            YEAR: enc(t.year % 100),
            CENTURY: enc(t.year // 100),
        }

    def _set_clock_from_ram(self):
        ram, dec = self.ram, self._decode
        raw_hours = ram[HOURS]
        if self.ram[REG_B] & REG_B_24H:
            hour = dec(raw_hours)
        else:
            hour = dec(raw_hours & ~HOUR_PM) % 12 + (12 if raw_hours & HOUR_PM else 0)
        try:
            t = datetime.datetime(
                dec(ram[CENTURY]) * 100 + dec(ram[YEAR]), dec(ram[MONTH]), dec(ram[DAY_OF_MONTH]),
                hour, dec(ram[MINUTES]), dec(ram[SECONDS]), tzinfo=datetime.timezone.utc)
        except ValueError:
            return  # not a date: the clock keeps running as it was
        self.offset = int(t.timestamp()) - math.floor(self.wallclock())

    def _read_flags(self):
        """Register C, computed at the read and then cleared (see the module note)."""
        flags = 0
        if not self._set_bit():
            second = math.floor(self._now())
            last = self._last_flags_second
            self._last_flags_second = second
            if last is not None and second > last:
                flags |= REG_C_UF
                if self._alarm_matches(second):
                    flags |= REG_C_AF
        enables = self.ram[REG_B]
        if (flags & REG_C_UF and enables & REG_B_UIE) or (flags & REG_C_AF and enables & REG_B_AIE):
            flags |= REG_C_IRQF
        return flags

    def _alarm_matches(self, second):
        now = self._time_bytes(second)
        for alarm, reg in ((SECONDS_ALARM, SECONDS), (MINUTES_ALARM, MINUTES), (HOURS_ALARM, HOURS)):
            wanted = self.ram[alarm]
            if wanted & ALARM_DONT_CARE != ALARM_DONT_CARE and wanted != now[reg]:
                return False
        return True
