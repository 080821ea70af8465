"""i8259A pair: programmed through its ports as Linux's init_8259A does."""

import pytest

from pyvmm.devices.pic import PicPair
from pyvmm.errors import ConfigError


def test_probe_reads_back_the_mask_before_init(pc):
    # Linux probe_8259A: writes 0xa5 to the master IMR and reads it back.
    pc.outb(0x21, 0xA5)
    assert pc.inb(0x21) == 0xA5


def test_irq0_delivers_vector_base_and_eoi_allows_the_next(pc):
    pc.init_pic(0x20, 0x28)
    pc.unmask()
    pic = pc.pic
    assert not pic.has_pending()
    pic.set_irq(0, 1)
    assert pic.has_pending() and pic.pending_vector() == 0x20
    assert pic.acknowledge() == 0x20
    assert not pic.has_pending()
    # A new edge while IRQ 0 is in service waits for the EOI.
    pic.set_irq(0, 0)
    pic.set_irq(0, 1)
    assert pic.pending_vector() is None
    pc.eoi(0)
    assert pic.acknowledge() == 0x20


def test_level_held_high_is_one_request_edges_are_latched(pc):
    pc.init_pic()
    pc.unmask()
    pc.pic.set_irq(3, 1)
    pc.pic.set_irq(3, 1)
    assert pc.pic.acknowledge() == 0x23
    pc.eoi(3)
    assert not pc.pic.has_pending()  # no new edge
    # Edge mode latches: the request survives the line falling before INTA.
    pc.pic.set_irq(3, 0)
    pc.pic.set_irq(3, 1)
    pc.pic.set_irq(3, 0)
    assert pc.pic.pending_vector() == 0x23


def test_masked_irq_stays_pending_until_unmasked(pc):
    pc.init_pic()
    pc.unmask(master=0xFF, slave=0xFF)  # Linux keeps everything masked at first
    pc.pic.set_irq(4, 1)
    assert not pc.pic.has_pending()
    pc.outb(0x20, 0x0A)  # OCW3: read IRR
    assert pc.inb(0x20) == 0x10
    pc.outb(0x21, 0xFF & ~0x10)
    assert pc.pic.acknowledge() == 0x24


def test_priority_and_in_service_nesting(pc):
    pc.init_pic()
    pc.unmask()
    pic = pc.pic
    pic.set_irq(5, 1)
    pic.set_irq(1, 1)
    assert pic.acknowledge() == 0x21          # IRQ 1 beats IRQ 5
    assert pic.pending_vector() is None       # IRQ 5 is below IRQ 1 in service
    pic.set_irq(0, 1)
    assert pic.acknowledge() == 0x20          # IRQ 0 nests above IRQ 1
    pc.outb(0x20, 0x0B)                       # OCW3: read ISR
    assert pc.inb(0x20) == 0x03
    pc.eoi(0)                                 # non-specific EOI clears IRQ 0
    assert pc.inb(0x20) == 0x02
    pc.outb(0x20, 0x61)                       # specific EOI for IRQ 1
    assert pc.inb(0x20) == 0x00
    assert pic.acknowledge() == 0x25


def test_cascade_slave_irq8_gets_slave_base(pc):
    pc.init_pic(0x20, 0x28)
    pc.unmask()
    pic = pc.pic
    pic.set_irq(8, 1)
    assert pic.pending_vector() == 0x28
    assert pic.acknowledge() == 0x28
    pc.outb(0x20, 0x0B)
    pc.outb(0xA0, 0x0B)
    assert pc.inb(0x20) == 0x04 and pc.inb(0xA0) == 0x01  # IR2 on master, IR0 on slave
    pic.set_irq(14, 1)
    assert pic.pending_vector() is None       # slave IRQ 8 blocks IRQ 14 (and IR2)
    pc.eoi(8)
    assert pic.acknowledge() == 0x2E
    pc.eoi(14)
    assert not pic.has_pending()


def test_masking_cascade_line_on_master_hides_slave(pc):
    pc.init_pic()
    pc.unmask(master=0x04)
    pc.pic.set_irq(12, 1)
    assert not pc.pic.has_pending()
    pc.unmask(master=0x00)
    assert pc.pic.acknowledge() == 0x2C


def test_spurious_irq7_and_irq15(pc):
    pc.init_pic(0x20, 0x28)
    pc.unmask()
    pic = pc.pic
    # Nothing requested: the INTA answers IRQ 7, with no ISR bit set.
    assert pic.acknowledge() == 0x27
    pc.outb(0x20, 0x0B)
    assert pc.inb(0x20) == 0x00
    # The slave raised its INT (latched at master IR2), then the request was masked
    # on the slave before the INTA: spurious IRQ 15, and master IR2 is in service.
    pic.set_irq(9, 1)
    pc.outb(0xA1, 0x02)
    assert pic.pending_vector() == 0x2F
    assert pic.acknowledge() == 0x2F
    pc.outb(0xA0, 0x0B)
    assert pc.inb(0x20) == 0x04 and pc.inb(0xA0) == 0x00
    pc.outb(0x20, 0x20)  # Linux: EOI the master only
    assert pc.inb(0x20) == 0x00


def test_auto_eoi_sets_no_in_service_bit(pc):
    pc.init_pic(0x40, 0x48, icw4=0x03)
    pc.unmask()
    pc.pic.set_irq(1, 1)
    assert pc.pic.acknowledge() == 0x41
    pc.outb(0x20, 0x0B)
    assert pc.inb(0x20) == 0x00
    pc.pic.set_irq(1, 0)
    pc.pic.set_irq(1, 1)
    assert pc.pic.acknowledge() == 0x41


def test_icw1_resets_mask_and_requests(pc):
    pc.init_pic()
    pc.unmask(master=0xF0)
    pc.pic.set_irq(1, 1)
    pc.init_pic()
    pc.outb(0x21, 0x00)
    assert pc.inb(0x21) == 0x00
    assert not pc.pic.has_pending()


def test_rotation_commands_do_not_crash_and_rotate(pc):
    pc.init_pic()
    pc.unmask()
    pic = pc.pic
    pic.set_irq(0, 1)
    assert pic.acknowledge() == 0x20
    pc.outb(0x20, 0xA0)  # rotate on non-specific EOI: IRQ 0 becomes lowest
    pic.set_irq(0, 0)
    pic.set_irq(0, 1)
    pic.set_irq(3, 1)
    assert pic.acknowledge() == 0x23
    pc.outb(0x20, 0xC7)  # set priority: IRQ 7 lowest again
    pc.outb(0x20, 0x80)  # rotate in AEOI (set)
    pc.outb(0x20, 0x00)  # rotate in AEOI (clear)
    pc.outb(0x20, 0x40)  # no operation
    pc.eoi(3)
    assert pic.acknowledge() == 0x20


def test_poll_mode(pc):
    pc.init_pic()
    pc.unmask()
    pc.pic.set_irq(6, 1)
    pc.outb(0x20, 0x0C)  # OCW3: poll
    assert pc.inb(0x20) == 0x86
    pc.outb(0x20, 0x0C)
    assert pc.inb(0x20) == 0x00  # IRQ 6 in service now, nothing else
    pc.outb(0x20, 0x0B)
    assert pc.inb(0x20) == 0x40


def test_level_triggered_request_follows_the_line(pc):
    pc.init_pic(icw1=0x19)  # ICW1 with LTIM
    pc.unmask()
    pc.pic.set_irq(5, 1)
    assert pc.pic.pending_vector() == 0x25
    pc.pic.set_irq(5, 0)
    assert not pc.pic.has_pending()


def test_special_mask_mode_lets_lower_levels_through(pc):
    pc.init_pic()
    pc.unmask()
    pc.pic.set_irq(1, 1)
    assert pc.pic.acknowledge() == 0x21
    pc.pic.set_irq(5, 1)
    assert pc.pic.pending_vector() is None
    pc.outb(0x21, 0x02)   # mask the in-service IRQ 1
    pc.outb(0x20, 0x68)   # OCW3: set special mask mode
    assert pc.pic.pending_vector() == 0x25
    pc.outb(0x20, 0x48)   # reset special mask mode
    assert pc.pic.pending_vector() is None


def test_bad_line_is_refused():
    with pytest.raises(ConfigError):
        PicPair().set_irq(16, 1)
    with pytest.raises(ConfigError, match="IRQ 9"):
        PicPair().set_irq(2, 1)
