import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUESTS = os.path.join(ROOT, "guests", "build")


@pytest.fixture
def guest():
    def path(name):
        return os.path.join(GUESTS, name + ".elf")
    return path


@pytest.fixture
def boot(guest):
    """Boot a bundled guest; returns (status, reason, console text, machine)."""
    from pyvmm.machine import Machine, VmConfig

    def run(name, **kw):
        out = bytearray()
        m = Machine(VmConfig(kernel=guest(name), console=out.extend, **kw))
        status, reason = m.run()
        return status, reason, out.decode(errors="replace"), m
    return run
