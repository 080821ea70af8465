import pytest

from pyvmm.mm.memory import GuestMemory


@pytest.fixture
def memory():
    mem = GuestMemory(16 << 20)
    yield mem
    mem.close()
