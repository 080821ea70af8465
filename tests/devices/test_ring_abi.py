"""Ring, blkif, netif and xs_wire layouts match gcc's for the real Xen headers byte for byte.

A C program includes Debian's xen/io/*.h, instantiates the rings as the headers do
(blkif.h and netif.h call DEFINE_RING_TYPES), and prints sizeof/offsetof for every
layout pyvmm declares plus each ring's __CONST_RING_SIZE; the test diffs that
against ``layout_lines`` and ``RingLayout.ring_size``.
"""

import os
import shutil
import subprocess

import pytest

from pyvmm.devices import blkif, netif, ring
from pyvmm.pv import xs_wire
from pyvmm.pv.cstruct import layout_lines

HEADERS = ["xen/xen.h", "xen/io/ring.h", "xen/io/blkif.h", "xen/io/netif.h", "xen/io/xs_wire.h"]
RINGS = [blkif.BLKIF_RING, netif.NETIF_TX_RING, netif.NETIF_RX_RING, netif.NETIF_CTRL_RING]
PAGE_SIZES = (4096, 8192, 1 << 16)

# ring.h has no struct for the header alone: check it inside blkif_sring_t.
_SRING_HEADER_LINES = [line.replace("struct sring_header", "blkif_sring_t")
                       for line in layout_lines(ring.SRING_HEADER)[1:]]

pytestmark = pytest.mark.skipif(
    not shutil.which("gcc") or not os.path.exists("/usr/include/xen/io/ring.h"),
    reason="needs gcc and the Xen public headers (libxen-dev)")


def _expected():
    lines = []
    for module in (blkif, netif, xs_wire):
        for typedef, agg in module.LAYOUTS:
            lines += layout_lines(agg, typedef)
    lines += _SRING_HEADER_LINES
    for layout in RINGS:
        for size in PAGE_SIZES:
            lines.append(f"ring_size({layout.name}, {size}) = {layout.ring_size(size)}")
    return lines


def _c_program(expected):
    body = []
    for line in expected:
        expr = line.split(" = ")[0]
        if expr.startswith("ring_size("):
            name, size = expr[len("ring_size("):-1].split(", ")
            value = f"(unsigned long)__CONST_RING_SIZE({name}, {size})"
        else:
            value = f"(unsigned long){expr}"
        body.append(f'    printf("%s = %lu\\n", "{expr}", {value});')
    includes = "\n".join(f"#include <{h}>" for h in HEADERS)
    return ("#include <stdio.h>\n#include <stddef.h>\n#include <stdint.h>\n#include <errno.h>\n"
            f"{includes}\nint main(void)\n{{\n" + "\n".join(body) + "\n    return 0;\n}\n")


def test_layouts_and_ring_sizes_match_gcc(tmp_path):
    expected = _expected()
    src = tmp_path / "layouts.c"
    src.write_text(_c_program(expected))
    exe = tmp_path / "layouts"
    subprocess.run(["gcc", "-O0", "-w", "-o", str(exe), str(src)], check=True)
    got = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()
    assert got == expected


def test_blkif_ring_is_32_entries_of_112_bytes_on_a_page():
    assert blkif.BLKIF_REQUEST.size == 112 and blkif.BLKIF_RING.ring_offset == 64
    assert blkif.BLKIF_RING.ring_size(4096) == 32
    assert ring.rd32(0) == 0 and ring.rd32(255) == 128 and ring.rd32(0xFFFFFFFF) == 1 << 31


def _constants():
    names = {}
    for module, prefixes in ((blkif, ("BLKIF_", "VDISK_")), (netif, ("NET", "XEN_NETIF_")),
                             (xs_wire, ("XS_", "XENSTORE_"))):
        for name, value in vars(module).items():
            if name.startswith(prefixes) and isinstance(value, int):
                names[name] = int(value)
    for member in xs_wire.XsType:
        names[member.name] = int(member)
    return names


def test_constants_and_xsd_errors_match_the_headers(tmp_path):
    consts = _constants()
    body = [f'    printf("{n} = %ld\\n", (long)({n}));' for n in sorted(consts)]
    body.append('    for (unsigned i = 0; i < sizeof(xsd_errors) / sizeof(xsd_errors[0]); i++)\n'
                '        printf("%s = %d\\n", xsd_errors[i].errstring, xsd_errors[i].errnum);')
    includes = "\n".join(f"#include <{h}>" for h in HEADERS)
    src = tmp_path / "consts.c"
    src.write_text("#include <stdio.h>\n#include <stdint.h>\n#include <errno.h>\n"
                   f"{includes}\nint main(void)\n{{\n" + "\n".join(body) + "\n    return 0;\n}\n")
    exe = tmp_path / "consts"
    subprocess.run(["gcc", "-w", "-o", str(exe), str(src)], check=True)
    got = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()
    expected = [f"{n} = {consts[n]}" for n in sorted(consts)]
    expected += [f"{n} = {xs_wire.XSD_ERRNO[n]}" for n in xs_wire.XSD_ERRORS]
    assert got == expected
