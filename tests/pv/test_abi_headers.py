"""pyvmm.pv.abi matches Xen's public headers byte for byte, as gcc compiles them.

The test writes a C program that includes the real headers (/usr/include/xen, from
Debian's libxen-dev) and prints, for every line ``python3 -m pyvmm.pv.abi`` prints,
the same ``sizeof``/``offsetof``/constant line computed by the compiler; the two
outputs must be identical. It is skipped only when gcc or the headers are missing.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

from pyvmm.pv import abi

XEN_INCLUDE = "/usr/include/xen"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_SIZEOF = re.compile(r"^sizeof\((?P<t>[^)]+)\) = \d+$")
_OFFSETOF = re.compile(r"^offsetof\((?P<t>[^,]+), (?P<m>[^)]+)\) = \d+$")
_CONST = re.compile(r"^(?P<c>[A-Za-z_][A-Za-z0-9_]*) = -?\d+$")


def c_program(lines, headers):
    """A C program printing ``lines`` with the values gcc computes from ``headers``."""
    out = ["#include <stddef.h>", "#include <stdint.h>", "#include <stdio.h>",
           f"#define __XEN_INTERFACE_VERSION__ {abi.XEN_INTERFACE_VERSION:#010x}"]
    ordered = sorted(headers, key=lambda h: (h != "xen/xen.h", h))
    out += [f"#include <{h}>" for h in ordered]
    out.append("int main(void) {")
    for line in lines:
        left = line.split(" = ")[0]
        if _SIZEOF.match(line) or _OFFSETOF.match(line):
            out.append(f'    printf("{left} = %zu\\n", (size_t){left});')
        elif _CONST.match(line):
            out.append(f'    printf("{left} = %lld\\n", (long long)({left}));')
        else:
            raise AssertionError(f"pyvmm.pv.abi printed a line the test cannot check: {line!r}")
    out += ["    return 0;", "}"]
    return "\n".join(out) + "\n"


def _need_toolchain():
    if shutil.which("gcc") is None:
        pytest.skip("gcc is not installed: cannot compile the Xen headers")
    if not os.path.isfile(os.path.join(XEN_INCLUDE, "grant_table.h")):
        pytest.skip(f"Xen public headers are absent ({XEN_INCLUDE}; install libxen-dev)")


def test_module_prints_every_layout_and_constant():
    out = subprocess.run([sys.executable, "-m", "pyvmm.pv.abi"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out == abi.all_lines()
    assert "sizeof(grant_entry_v1_t) = 8" in out
    assert "offsetof(shared_info_t, evtchn_mask) = 2560" in out
    assert "sizeof(vcpu_info_t) = 64" in out
    assert "GNTST_bad_copy_arg = -10" in out
    assert "XEN_EFAULT = 14" in out


def test_layouts_and_constants_match_gcc_on_the_real_headers(tmp_path):
    _need_toolchain()
    lines = abi.all_lines()
    src = tmp_path / "abi.c"
    src.write_text(c_program(lines, abi.headers()))
    exe = tmp_path / "abi"
    build = subprocess.run(["gcc", "-std=gnu11", "-Wall", "-o", str(exe), str(src)],
                           capture_output=True, text=True)
    assert build.returncode == 0, f"gcc failed on the Xen headers:\n{build.stderr}"
    c_lines = subprocess.run([str(exe)], check=True, capture_output=True,
                             text=True).stdout.splitlines()
    mismatches = [(py, c) for py, c in zip(lines, c_lines) if py != c]
    assert len(c_lines) == len(lines)
    assert not mismatches, "pyvmm differs from the headers:\n" + "\n".join(
        f"  pyvmm: {py}\n  gcc:   {c}" for py, c in mismatches)


def test_registry_refuses_a_second_layout_under_the_same_name():
    with pytest.raises(ValueError, match="already registered"):
        abi.register_layout("grant_entry_v1_t", abi.Struct("other", [("x", abi.u8)]), "x.h")
    with pytest.raises(ValueError, match="clashes"):
        abi.register_constants("x.h", {"GNTST_okay": 5})


def test_hypercall_table_layouts_and_numbers_are_registered():
    out = abi.all_lines()
    for line in ("sizeof(xen_compile_info_t) = 144", "sizeof(xen_feature_info_t) = 8",
                 "sizeof(xen_platform_parameters_t) = 8", "sizeof(mmuext_op_t) = 24",
                 "sizeof(multicall_entry_t) = 64", "sizeof(xen_memory_reservation_t) = 32",
                 "sizeof(sched_poll_t) = 24", "__HYPERVISOR_update_va_mapping = 14",
                 "MMUEXT_COPY_PAGE = 17", "UVMF_ALL = 4", "XENVER_get_features = 6",
                 "XENFEAT_mmu_pt_update_preserve_ad = 5", "CONSOLEIO_read = 1"):
        assert line in out


def test_unregistered_hypercall_constants_match_gcc(tmp_path):
    """Constants the registry cannot print as long long, or that are sizes of typedefs."""
    _need_toolchain()
    checks = {"HYPERVISOR_VIRT_START": abi.HYPERVISOR_VIRT_START,
              "sizeof(xen_commandline_t)": abi.XEN_COMMANDLINE_LEN,
              "sizeof(xen_domain_handle_t)": abi.XEN_DOMAIN_HANDLE_LEN}
    src = tmp_path / "extra.c"
    body = "".join(f'    printf("%llu\\n", (unsigned long long)({expr}));\n' for expr in checks)
    src.write_text("#include <stdint.h>\n#include <stdio.h>\n#include <xen/xen.h>\n#include <xen/version.h>\n"
                   f"int main(void) {{\n{body}    return 0;\n}}\n")
    exe = tmp_path / "extra"
    build = subprocess.run(["gcc", "-o", str(exe), str(src)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    values = [int(v) for v in subprocess.run([str(exe)], check=True, capture_output=True,
                                             text=True).stdout.split()]
    assert values == list(checks.values())
