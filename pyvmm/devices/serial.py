"""COM1: a National Semiconductor PC16550D UART (16550A) at 0x3F8-0x3FF, IRQ 4.

Responsibility: the UART's registers as a driver sees them (RBR/THR, IER, IIR/FCR,
LCR, MCR, LSR, MSR, SCR, divisor latch), the receive FIFO, the interrupt sources and
their priority, and modem-control loopback. Bytes the guest transmits go to ``sink``;
bytes for the guest come in through ``feed``. Register and bit names follow the
PC16550D datasheet (National Semiconductor, "PC16550D Universal Asynchronous
Receiver/Transmitter with FIFOs", Table II "Summary of Registers" and Table IV
"Interrupt Control Functions").

Invariants:
- transmission is instantaneous: THR and the transmitter are always empty again when
  a THR write returns, so LSR.THRE and LSR.TEMT always read 1 and every transmitted
  byte has been passed to ``sink`` (one call per byte; nothing is buffered, so
  ``flush`` has nothing to push);
- the receive FIFO holds at most 16 bytes (1 with FIFOs disabled, the 16450 mode); a
  byte arriving when it is full sets LSR.OE and is lost (FIFO mode) or replaces the
  unread byte (16450 mode), as the datasheet specifies;
- IIR always reports the highest-priority pending source (line status > received
  data / character timeout > THR empty > modem status) with bits 7-6 set when FIFOs
  are enabled;
- as on a PC serial port, the UART's interrupt output reaches IRQ 4 only through a
  buffer enabled by MCR.OUT2; in loopback mode the OUT2 pin is forced inactive, so no
  IRQ then (IIR still reports the interrupt). ``irq(level)`` is called exactly when
  "an interrupt is pending and OUT2 enables the buffer" changes;
- in loopback mode (MCR bit 4) transmitted bytes are received, the modem status
  inputs read the modem control outputs (CTS=RTS, DSR=DTR, RI=OUT1, DCD=OUT2), and
  ``feed`` accepts nothing (the serial input is disconnected).

Approximations: the character timeout (IIR 0x0C) is reported as soon as the FIFO
holds fewer bytes than the trigger level (no four-character-time wait); the line
settings and divisor are stored but do not shape data or timing; parity, framing and
break errors never occur. (QEMU does not gate the IRQ with OUT2; Linux's 8250 driver
sets OUT2, so it works either way.)

Save/restore: ``save()`` gives the registers, the unread receive FIFO bytes in order
and the pending-THRE latch; ``restore`` checks all of them first. The interrupt
output level is derived from the restored registers without calling ``irq``: the
PIC's own saved state already holds the line level.
"""

from collections import deque

from pyvmm.migrate.state import StateFields

COM1_BASE = 0x3F8
FIFO_SIZE = 16
UART_CLOCK_BAUD = 115200  # 1.8432 MHz / 16

# Register offsets.
RBR_THR_DLL, IER_DLM, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)
# IER
IER_ERBFI = 0x01   # received data available
IER_ETBEI = 0x02   # transmitter holding register empty
IER_ELSI = 0x04    # receiver line status
IER_EDSSI = 0x08   # modem status
IER_MASK = 0x0F
# IIR: bit 0 = 1 when no interrupt is pending; bits 3-1 identify the source.
IIR_NONE = 0x01
IIR_RLS = 0x06
IIR_RDA = 0x04
IIR_TIMEOUT = 0x0C
IIR_THRE = 0x02
IIR_MODEM = 0x00
IIR_FIFOS_ENABLED = 0xC0
# FCR
FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
RX_TRIGGER_LEVELS = (1, 4, 8, 14)  # FCR bits 7-6
# LCR
LCR_DLAB = 0x80
# MCR
MCR_DTR, MCR_RTS, MCR_OUT1, MCR_OUT2, MCR_LOOP = 0x01, 0x02, 0x04, 0x08, 0x10
MCR_MASK = 0x1F
# LSR
LSR_DR, LSR_OE, LSR_PE, LSR_FE, LSR_BI, LSR_THRE, LSR_TEMT = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI
# MSR: deltas in bits 3-0, input levels in bits 7-4.
MSR_DCTS, MSR_DDSR, MSR_TERI, MSR_DDCD = 0x01, 0x02, 0x04, 0x08
MSR_CTS, MSR_DSR, MSR_RI, MSR_DCD = 0x10, 0x20, 0x40, 0x80
# A terminal is attached: clear to send, data set ready and carrier detect (as QEMU).
CONNECTED_INPUTS = MSR_CTS | MSR_DSR | MSR_DCD


class Serial16550:
    """A 16550A at ``base`` (COM1 by default): ``sink(bytes)`` out, ``feed`` in."""

    def __init__(self, sink, irq=None, base=COM1_BASE, name="16550A UART (COM1)"):
        self.name = name
        self.base = base
        self.ports = tuple(range(base, base + 8))
        self.sink = sink
        self.irq = irq
        self.overruns = 0
        self._irq_level = 0
        self.reset()

    def reset(self):
        """Master reset (datasheet Table III): registers to their reset values."""
        self.rx = deque()
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.scr = 0
        self.divisor = 1
        self.fifo_enabled = False
        self.rx_trigger = 1
        self.errors = 0          # LSR error bits not yet read
        self.msr_delta = 0
        self.modem_inputs = CONNECTED_INPUTS
        self.thr_ipending = False
        self.last_rbr = 0
        self._update_irq()

    # --- save / restore -------------------------------------------------------
    _BYTES = ("ier", "lcr", "mcr", "scr", "errors", "msr_delta", "modem_inputs", "last_rbr")

    def save(self):
        state = {name: getattr(self, name) for name in self._BYTES}
        state.update(rx=bytes(self.rx), divisor=self.divisor, fifo_enabled=self.fifo_enabled,
                     rx_trigger=self.rx_trigger, thr_ipending=self.thr_ipending,
                     overruns=self.overruns)
        return state

    def restore(self, state):
        """Take the state ``save`` gave; checked in full before anything changes."""
        f = StateFields(state, self.name)
        values = {name: f.uint(name, 0x100) for name in self._BYTES}
        for name, mask in (("ier", IER_MASK), ("mcr", MCR_MASK), ("errors", LSR_ERRORS),
                           ("msr_delta", 0x0F), ("modem_inputs", 0xF0)):
            if values[name] & ~mask:
                f.fail(name, f"{values[name]:#x} has bits outside {mask:#x}")
        values["fifo_enabled"] = f.flag("fifo_enabled")
        capacity = FIFO_SIZE if values["fifo_enabled"] else 1
        values["rx"] = deque(f.blob("rx", max_size=capacity))
        values["divisor"] = f.uint("divisor", 0x10000)
        values["rx_trigger"] = f.choice("rx_trigger", RX_TRIGGER_LEVELS)
        values["thr_ipending"] = f.flag("thr_ipending")
        values["overruns"] = f.uint("overruns", 1 << 64)
        f.done()
        for name, value in values.items():
            setattr(self, name, value)
        self._irq_level = int(self.mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2
                              and self._interrupt_source() != IIR_NONE)

    # --- host side ------------------------------------------------------------
    def rx_space(self):
        """How many bytes ``feed`` can take now without an overrun."""
        if self.mcr & MCR_LOOP:
            return 0
        return self._rx_capacity() - len(self.rx)

    def feed(self, data):
        """Bytes arriving on the serial input; returns how many were taken.

        Bytes beyond ``rx_space()`` overrun (LSR.OE); in loopback mode nothing is
        taken (returns 0), as the input is disconnected.
        """
        if self.mcr & MCR_LOOP:
            return 0
        for byte in data:
            self._receive(byte)
        self._update_irq()
        return len(data)

    def flush(self):
        """Push buffered output to the sink: nothing is ever buffered (see above)."""

    @property
    def baud(self):
        return UART_CLOCK_BAUD // self.divisor if self.divisor else 0

    # --- guest side -----------------------------------------------------------
    def io_read(self, port, size):
        reg = port - self.base
        dlab = self.lcr & LCR_DLAB
        if reg == RBR_THR_DLL:
            value = self.divisor & 0xFF if dlab else self._read_rbr()
        elif reg == IER_DLM:
            value = self.divisor >> 8 if dlab else self.ier
        elif reg == IIR_FCR:
            value = self._read_iir()
        elif reg == LCR:
            value = self.lcr
        elif reg == MCR:
            value = self.mcr
        elif reg == LSR:
            value = self._read_lsr()
        elif reg == MSR:
            value = self.modem_inputs | self.msr_delta
            self.msr_delta = 0
        else:
            value = self.scr
        self._update_irq()
        return value

    def io_write(self, port, size, value):
        reg = port - self.base
        dlab = self.lcr & LCR_DLAB
        if reg == RBR_THR_DLL:
            if dlab:
                self.divisor = (self.divisor & 0xFF00) | value
            else:
                self._transmit(value)
        elif reg == IER_DLM:
            if dlab:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
            else:
                self._write_ier(value)
        elif reg == IIR_FCR:
            self._write_fcr(value)
        elif reg == LCR:
            self.lcr = value
        elif reg == MCR:
            self._write_mcr(value)
        elif reg == SCR:
            self.scr = value
        # LSR and MSR writes (factory test) are ignored.
        self._update_irq()

    # --- registers -----------------------------------------------------------
    def _read_rbr(self):
        if self.rx:
            self.last_rbr = self.rx.popleft()
        return self.last_rbr

    def _read_lsr(self):
        value = LSR_THRE | LSR_TEMT | self.errors
        if self.rx:
            value |= LSR_DR
        self.errors = 0  # reading LSR clears OE, PE, FE and BI
        return value

    def _read_iir(self):
        source = self._interrupt_source()
        if source == IIR_THRE:
            self.thr_ipending = False  # reading IIR clears a THRE interrupt it reports
        return source | (IIR_FIFOS_ENABLED if self.fifo_enabled else 0)

    def _write_ier(self, value):
        value &= IER_MASK
        if value & IER_ETBEI and not self.ier & IER_ETBEI:
            # Enabling ETBEI with THR empty raises the THRE interrupt at once.
            self.thr_ipending = True
        self.ier = value

    def _write_fcr(self, value):
        enable = bool(value & FCR_ENABLE)
        if enable != self.fifo_enabled:
            self.rx.clear()  # changing FCR0 resets both FIFOs
        self.fifo_enabled = enable
        if not enable:
            return  # other FCR bits are only programmed together with FCR0 = 1
        if value & FCR_CLEAR_RX:
            self.rx.clear()
        # FCR_CLEAR_TX: the transmit FIFO is always empty.
        self.rx_trigger = RX_TRIGGER_LEVELS[value >> 6]

    def _write_mcr(self, value):
        self.mcr = value & MCR_MASK
        if self.mcr & MCR_LOOP:
            inputs = (((self.mcr & MCR_RTS) and MSR_CTS) | ((self.mcr & MCR_DTR) and MSR_DSR)
                      | ((self.mcr & MCR_OUT1) and MSR_RI) | ((self.mcr & MCR_OUT2) and MSR_DCD))
        else:
            inputs = CONNECTED_INPUTS
        changed = inputs ^ self.modem_inputs
        if changed & MSR_CTS:
            self.msr_delta |= MSR_DCTS
        if changed & MSR_DSR:
            self.msr_delta |= MSR_DDSR
        if changed & MSR_DCD:
            self.msr_delta |= MSR_DDCD
        if changed & MSR_RI and not inputs & MSR_RI:
            self.msr_delta |= MSR_TERI  # trailing edge of RI
        self.modem_inputs = inputs

    def _transmit(self, byte):
        self.thr_ipending = False  # writing THR clears the THRE interrupt ...
        if self.mcr & MCR_LOOP:
            self._receive(byte)
        else:
            self.sink(bytes((byte,)))
        self.thr_ipending = True   # ... and THR is empty again at once

    def _receive(self, byte):
        if len(self.rx) < self._rx_capacity():
            self.rx.append(byte)
            return
        self.errors |= LSR_OE
        self.overruns += 1
        if not self.fifo_enabled:
            self.rx[-1] = byte  # 16450 mode: the new character replaces the unread one

    def _rx_capacity(self):
        return FIFO_SIZE if self.fifo_enabled else 1

    # --- interrupts ------------------------------------------------------------
    def _interrupt_source(self):
        ier = self.ier
        if ier & IER_ELSI and self.errors:
            return IIR_RLS
        if ier & IER_ERBFI and self.rx:
            if self.fifo_enabled and len(self.rx) < self.rx_trigger:
                return IIR_TIMEOUT
            return IIR_RDA
        if ier & IER_ETBEI and self.thr_ipending:
            return IIR_THRE
        if ier & IER_EDSSI and self.msr_delta:
            return IIR_MODEM
        return IIR_NONE

    def _update_irq(self):
        enabled = self.mcr & (MCR_OUT2 | MCR_LOOP) == MCR_OUT2
        level = int(enabled and self._interrupt_source() != IIR_NONE)
        if level != self._irq_level:
            self._irq_level = level
            if self.irq is not None:
                self.irq(level)
