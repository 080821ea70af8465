"""Placing an initial ramdisk (initrd / initramfs) in guest RAM.

Responsibility: read an initrd file and copy it where the kernel allows: page
aligned, as high as possible, ending at or below both the kernel's initrd_addr_max
(the highest byte it may occupy) and the end of guest RAM, and starting at or above
the end of the memory the kernel needs (``LoadedKernel.reserved_end``), as boot.rst
suggests ("an initrd should be placed near end of memory").

Invariants: the initrd never overlaps the kernel or its init_size working area; an
empty, unreadable or too large initrd is a ``BadImageError`` naming the initrd file,
and nothing is written then.
"""

from pyvmm.boot.image import mib, read_image
from pyvmm.errors import BadImageError
from pyvmm.mm.layout import PAGE_SIZE


def load_initrd(path, memory, kernel):
    """Copy the initrd at ``path`` into ``memory`` above ``kernel``; return (gpa, size)."""
    path = str(path)
    data = read_image(path, "initrd")
    if not data:
        raise BadImageError(path, "initrd file is empty")
    ceiling = min(kernel.initrd_addr_max + 1, memory.size)
    floor = -(-kernel.reserved_end // PAGE_SIZE) * PAGE_SIZE
    gpa = (ceiling - len(data)) // PAGE_SIZE * PAGE_SIZE
    if gpa < floor:
        raise BadImageError(path, f"initrd of {mib(len(data))} does not fit in guest RAM above the "
                                  f"kernel ({mib(max(ceiling - floor, 0))} free)")
    memory.write(gpa, data)
    return gpa, len(data)
