"""QEMU as the oracle for the wire protocol: our client drives a real QEMU QMP
monitor, and our server answers the same protocol-level requests with the
same reply shapes and error classes QEMU does."""

import os
import shutil
import subprocess
import time

import pytest

from pyvmm.control.client import ControlClient
from pyvmm.errors import ControlCommandError, ControlError

from tests.control.peers import RawConn

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed")


@pytest.fixture
def qemu(tmp_path):
    """A QEMU with no machine, paused before start (-S), QMP on a unix socket."""
    path = f"{tmp_path}/q.sock"
    if len(path) > 100:
        pytest.skip("tmp path too long for AF_UNIX")
    proc = subprocess.Popen([QEMU, "-machine", "none", "-nodefaults", "-display", "none", "-S",
                             "-qmp", f"unix:{path},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.skip(f"QEMU did not start: {proc.stderr.read().decode(errors='replace')[:200]}")
        time.sleep(0.02)
    yield path
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    proc.stderr.close()


def test_our_client_drives_qemu(qemu):
    with ControlClient(qemu) as c:
        assert "qemu" in c.greeting["version"]
        with pytest.raises(ControlCommandError) as e:
            c.execute("query-status")
        assert e.value.error_class == "CommandNotFound"
        c.negotiate()
        assert c.execute("query-status")["status"] == "prelaunch"
        c.execute("cont")
        assert c.wait_event("RESUME", timeout=5)["event"] == "RESUME"
        assert c.execute("query-status")["running"] is True
        c.execute("stop")
        assert c.wait_event("STOP", timeout=5)["event"] == "STOP"
        with pytest.raises(ControlCommandError) as e:
            c.execute("no-such-command")
        assert e.value.error_class == "CommandNotFound"
        c.execute("quit")
        assert c.wait_event("SHUTDOWN", timeout=5)["event"] == "SHUTDOWN"
        with pytest.raises(ControlError, match="closed the control connection|connection lost"):
            c.wait_event(timeout=5)


# Requests whose meaning is the same for QEMU and pyvmm; each is sent in order.
SCRIPT = [
    b'{"execute": "stop", "id": 1}',                              # before negotiation
    b'{"execute": "qmp_capabilities", "id": 2}',
    b'{"execute": "qmp_capabilities", "id": 3}',                  # twice
    b'{"execute": }',                                             # not JSON
    b'[1, 2]',                                                    # not an object
    b'"stop"',
    b'{"id": 4}',                                                 # no execute
    b'{"execute": 5, "id": 5}',
    b'{"execute": "stop", "arguments": [], "id": 6}',
    b'{"execute": "stop", "bogus": 1, "id": 7}',
    b'{"execute": "stop", "arguments": {"bogus": 1}, "id": 8}',
    b'{"execute": "no-such-command", "id": {"n": 9}}',
    b'{"execute": "query-status", "id": "s"}',
    b'{"execute": "query-migrate", "id": "m"}',
    b'{"execute": "migrate", "arguments": {}, "id": 10}',           # missing parameter
    b'{"execute": "migrate", "arguments": {"uri": 7}, "id": 11}',   # wrong type
]


def shape(reply):
    """What must agree: return or error, the error class, the echoed id."""
    kind = ("error", reply["error"]["class"]) if "error" in reply else ("return",)
    return kind + ((reply["id"],) if "id" in reply else ())


def run_script(path):
    c = RawConn(path)
    try:
        return [shape(c.ask(line)) for line in SCRIPT]
    finally:
        c.close()


def test_our_server_replies_like_qemu(qemu, vm_server, sock_path):
    theirs = run_script(qemu)
    ours = run_script(sock_path)
    assert ours == theirs
