"""Fixtures for the control tests: a short socket path, a ControlServer on a
FakeVm, and raw connections to it."""

import tempfile

import pytest

from pyvmm.control.server import ControlServer
from tests.control.peers import FakeVm, RawConn


@pytest.fixture
def sock_path():
    # AF_UNIX paths are limited to 107 bytes: keep it short, not under tmp_path.
    with tempfile.TemporaryDirectory(prefix="pvctl") as d:
        yield f"{d}/ctl.sock"


@pytest.fixture
def vm_server(sock_path):
    vm = FakeVm()
    server = ControlServer(sock_path, vm)
    vm.server = server
    yield vm, server
    server.close()


@pytest.fixture
def conn(vm_server, sock_path):
    c = RawConn(sock_path)
    c.negotiate()
    yield c
    c.close()


@pytest.fixture
def connect(vm_server, sock_path):
    """Open raw connections (negotiated unless told not to); all closed at the end."""
    opened = []

    def open_conn(negotiate=True):
        c = RawConn(sock_path)
        if negotiate:
            c.negotiate()
        opened.append(c)
        return c

    yield open_conn
    for c in opened:
        c.close()
