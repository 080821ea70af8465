"""The guest kernels in guests/build/ are well-formed ELF kernels and match their sources.

The guests are committed as binaries so that the VMM tests need no assembler. This test
rebuilds them from guests/*.S in a temporary copy of guests/ and checks that every ELF has
the shape pyvmm's loader expects (docs/platform.md) and is byte-identical to the committed
one, i.e. nobody changed a source without rebuilding (or committed a stale binary).
"""
import shutil
import subprocess
from pathlib import Path

import pytest

elffile = pytest.importorskip("elftools.elf.elffile")

REPO = Path(__file__).resolve().parent.parent
GUESTS_DIR = REPO / "guests"
COMMITTED = GUESTS_DIR / "build"

LOAD_ADDRESS = 0x100000            # every guest is linked at 1 MiB (guests/kernel.ld)
GUESTS = {                         # name -> (ELF class, e_machine)
    "hello": (64, "EM_X86_64"),
    "lab": (64, "EM_X86_64"),
    "timer": (64, "EM_X86_64"),
    "exceptions": (64, "EM_X86_64"),
    "crash": (64, "EM_X86_64"),
    "pgtable": (64, "EM_X86_64"),
    "spin": (64, "EM_X86_64"),
    "vmexit": (64, "EM_X86_64"),
    "memdirty": (64, "EM_X86_64"),
    "pvguest": (64, "EM_X86_64"),
    "blkfront": (64, "EM_X86_64"),
    "netfront": (64, "EM_X86_64"),
    "pvticks": (64, "EM_X86_64"),
    "pvspin": (64, "EM_X86_64"),
    "pvballoon": (64, "EM_X86_64"),
    "pvhostile": (64, "EM_X86_64"),
    "pvgrantmap": (64, "EM_X86_64"),
    "pvbench": (64, "EM_X86_64"),
    "hello32": (32, "EM_386"),
    "exceptions32": (32, "EM_386"),
}

pytestmark = pytest.mark.skipif(
    any(shutil.which(tool) is None for tool in ("as", "ld", "make", "gcc")),
    reason="needs GNU as, ld, make and gcc (the PV guest is C) to build the guests",
)


@pytest.fixture(scope="module")
def fresh_build(tmp_path_factory):
    """Build the guests from a copy of guests/ without its build/ directory."""
    copy = tmp_path_factory.mktemp("guests") / "guests"
    shutil.copytree(GUESTS_DIR, copy, ignore=shutil.ignore_patterns("build"))
    result = subprocess.run(["make", "-C", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0, "make -C guests failed:\n" + result.stdout + result.stderr
    return copy / "build"


def test_make_builds_exactly_the_known_guests(fresh_build):
    assert sorted(p.stem for p in fresh_build.glob("*.elf")) == sorted(GUESTS)


def test_no_stale_committed_guests():
    assert sorted(p.stem for p in COMMITTED.glob("*.elf")) == sorted(GUESTS)


@pytest.mark.parametrize("name", sorted(GUESTS))
def test_guest_elf_shape(fresh_build, name):
    bits, machine = GUESTS[name]
    with open(fresh_build / f"{name}.elf", "rb") as f:
        elf = elffile.ELFFile(f)
        assert elf.elfclass == bits
        assert elf.header["e_machine"] == machine
        assert elf.header["e_type"] == "ET_EXEC"
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert loads, "no PT_LOAD segment"
        assert any(s["p_paddr"] == LOAD_ADDRESS for s in loads), "no PT_LOAD at 1 MiB"
        for seg in loads:
            assert seg["p_vaddr"] == seg["p_paddr"], "guests run identity mapped"
            assert seg["p_filesz"] <= seg["p_memsz"]
            assert seg["p_paddr"] >= LOAD_ADDRESS, "segment below 1 MiB would hit the boot area"
        entry = elf.header["e_entry"]
        assert any(s["p_vaddr"] <= entry < s["p_vaddr"] + s["p_filesz"] for s in loads), \
            "entry point %#x is not inside a PT_LOAD segment" % entry
        symtab = elf.get_section_by_name(".symtab")
        if symtab is not None:
            starts = symtab.get_symbol_by_name("_start")
            assert starts and starts[0]["st_value"] == entry


@pytest.mark.parametrize("name", sorted(GUESTS))
def test_committed_guest_matches_sources(fresh_build, name):
    committed = COMMITTED / f"{name}.elf"
    assert committed.exists(), f"{committed} is missing: run `make -C guests` and commit it"
    assert (fresh_build / f"{name}.elf").read_bytes() == committed.read_bytes(), (
        f"guests/build/{name}.elf does not match guests/*.S: run `make -C guests` and commit it")
