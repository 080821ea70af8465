"""Test helpers: a small set of domains, and hypercalls issued the way a guest does.

A guest's hypercall arguments live in its own RAM: ``call_gnttab``/``call_evtchn``
write the op structs at SCRATCH, call the entry point as the hypercall table does,
and read the structs back as the guest would.
"""

from pyvmm.mm.memory import GuestMemory
from pyvmm.pv import abi
from pyvmm.pv.domain import Domain, DomainTable
from pyvmm.pv.event_channel import event_channel_op
from pyvmm.pv.grant_table import grant_table_op

MiB = 1 << 20
GRANT_FRAMES = [0x100, 0x101, 0x102, 0x103]   # gfns each guest reserves for its grant table
SCRATCH = 0x10000                              # where a guest puts hypercall arguments
DATA_GFN = 0x200                               # a frame guests grant in the tests


def world(nr_guests=2, ram=4 * MiB, **guest_kw):
    """A DomainTable with a Python domain 0 and guests 1..nr_guests."""
    table = DomainTable()
    dom0 = table.add(Domain(0, name="dom0", privileged=True))
    guests = [table.add(Domain(i, GuestMemory(ram), grant_frames=GRANT_FRAMES, **guest_kw))
              for i in range(1, nr_guests + 1)]
    return table, dom0, guests


def call_gnttab(domain, cmd, layout, ops, count=None, at=SCRATCH):
    """Issue grant_table_op with ``ops`` (dicts) in the guest's RAM; (rc, ops read back)."""
    raw = b"".join(layout.pack(**op) for op in ops)
    domain.memory.write(at, raw)
    rc = grant_table_op(domain, cmd, at, len(ops) if count is None else count)
    back = [layout.unpack(domain.memory.read(at + i * layout.size, layout.size))
            for i in range(len(ops))]
    return rc, back


def call_evtchn(domain, cmd, layout, **fields):
    """Issue event_channel_op with one op struct; (rc, the struct read back)."""
    domain.memory.write(SCRATCH, layout.pack(**fields))
    rc = event_channel_op(domain, cmd, SCRATCH)
    return rc, layout.unpack(domain.memory.read(SCRATCH, layout.size))


def copy_op(src, dst, length, flags):
    """A gnttab_copy dict: ``src``/``dst`` are (ref or gmfn, domid, offset).

    The union holds both members, as ``abi.gnttab_copy.unpack`` gives them: a ref is
    the low 4 bytes of the 8-byte gmfn.
    """
    def ptr(p):
        return {"u": {"ref": p[0] & 0xFFFF_FFFF, "gmfn": p[0]}, "domid": p[1], "offset": p[2]}
    return {"source": ptr(src), "dest": ptr(dst), "len": length, "flags": flags}


def fill(domain, gfn, byte):
    domain.page(gfn)[:] = bytes([byte]) * abi.PAGE_SIZE
