"""Interrupt request lines: how a device drives one input of an interrupt controller.

Responsibility: the one shared type for wiring devices to the PIC. A device is given
an ``irq`` callable and calls ``irq(level)`` (1 = asserted, 0 = deasserted) whenever
the level of its interrupt output changes; it never knows which controller or line
number is behind it. ``IrqLine(controller, line)`` is that callable for a controller
with ``set_irq(line, level)`` (pyvmm.devices.pic.PicPair).

Invariant: an IrqLine only forwards; it keeps no state, so the controller's view of
the line level is the only one.
"""


class IrqLine:
    """``irq(level)`` for line ``line`` of ``controller`` (anything with set_irq)."""

    __slots__ = ("controller", "line")

    def __init__(self, controller, line):
        self.controller = controller
        self.line = line

    def __call__(self, level):
        self.controller.set_irq(self.line, level)

    def __repr__(self):
        return f"IrqLine({type(self.controller).__name__}, {self.line})"


def no_irq(level):
    """An interrupt output wired to nothing (the default for an unwired device)."""
