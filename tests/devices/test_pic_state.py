"""8259A pair save/restore: the restored pair delivers the same interrupts, in the same
order, as the original left running; bad states are refused with the field named."""

import pytest

from pyvmm.devices.pic import PicPair
from tests.devices.statecheck import DELETE, refused_unchanged, through_stream, with_field


def _busy_pic(pc):
    """A Linux-programmed pair with requests latched, one in service and a mask set."""
    pc.init_pic(0x20, 0x28)
    pc.unmask(master=0x00, slave=0x00)
    for line in (1, 3, 12, 14):
        pc.pic.set_irq(line, 1)
    assert pc.pic.acknowledge() == 0x21          # IRQ 1 in service, not yet EOI'd
    pc.pic.set_irq(3, 0)                          # edge mode: IRQ 3 stays latched
    pc.outb(0x21, 0x10)                           # mask IRQ 4
    pc.pic.set_irq(4, 1)
    pc.outb(0xA0, 0x0B)                           # slave: reads return ISR
    return pc.pic


def _script(pic, pc_outb):
    """What a guest sees from here: IRR/ISR/IMR reads, vectors, EOIs, new edges."""
    seen = [pic.io_read(0x20, 1), pic.io_read(0x21, 1), pic.io_read(0xA0, 1), pic.io_read(0xA1, 1),
            pic.has_pending(), pic.pending_vector()]
    pic.set_irq(12, 1)                            # already high: no new edge
    pic.set_irq(5, 1)                             # a new edge
    for _ in range(6):
        seen.append(pic.acknowledge())
        pc_outb(0x20, 0x20)
        if seen[-1] >= 0x28:
            pc_outb(0xA0, 0x20)
    pc_outb(0x21, 0x00)                           # unmask IRQ 4: it was latched while masked
    seen += [pic.pending_vector(), pic.acknowledge()]
    return seen


def test_restored_pair_delivers_what_the_original_would(pc):
    pic = _busy_pic(pc)
    state = through_stream(pic.save())
    other = PicPair()
    other.restore(state)
    assert other.save() == pic.save()

    def outb_on(target):
        return lambda port, value: target.io_write(port, 1, value)

    assert _script(other, outb_on(other)) == _script(pic, outb_on(pic))


def test_mid_initialisation_state_is_kept(pc):
    pc.outb(0x20, 0x11)                           # ICW1; ICW2..4 still to come
    pc.outb(0x21, 0x40)
    other = PicPair()
    other.restore(through_stream(pc.pic.save()))
    for pic in (pc.pic, other):
        pic.io_write(0x21, 1, 0x04)               # ICW3
        pic.io_write(0x21, 1, 0x01)               # ICW4
        pic.io_write(0x21, 1, 0xFE)               # now OCW1
    assert other.save() == pc.pic.save()
    assert other.master.base == 0x40 and other.master.imr == 0xFE


@pytest.mark.parametrize("path, value, match", [
    (("master", "irr"), 0x100, r"master 8259A state field 'irr': 256 is outside 0..255"),
    (("slave", "init_step"), 1, r"slave 8259A state field 'init_step': 1 is not one of"),
    (("master", "base"), 0x21, r"'base': 0x21 has bits 2-0 set"),
    (("master", "lowest"), -1, r"'lowest': -1 is outside 0..7"),
    (("slave", "poll"), 1, r"'poll': 1 is not a bool"),
    (("slave", "isr"), DELETE, r"slave 8259A state field 'isr': missing"),
    (("slave",), "x", r"slave 8259A state: expected a map, got str"),
])
def test_bad_state_is_refused_and_nothing_changes(pc, path, value, match):
    pic = _busy_pic(pc)
    good = pic.save()
    fresh = PicPair()
    refused_unchanged(fresh, with_field(good, path, value), match)


def test_unknown_field_is_refused(pc):
    state = dict(pc.pic.save(), elcr=0)
    refused_unchanged(PicPair(), state, r"unknown field\(s\) 'elcr'")
