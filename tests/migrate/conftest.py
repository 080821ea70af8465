import pytest

from pyvmm.migrate.dirty_scan import BACKENDS, DirtyScanner


@pytest.fixture
def pair():
    """The C and the Python scanner, to run on the same inputs."""
    return DirtyScanner("c"), DirtyScanner("python")


@pytest.fixture(params=BACKENDS)
def scanner(request):
    return DirtyScanner(request.param)
