"""The PV guest (guests/pvguest.c, `pyvmm boot --pv`) saved mid-run and restored, and
live-migrated mid-run: its grant table, event channels, xenstore home, timer, upcall
vector and console carry over, so the output of the two halves together is exactly
what an unmigrated run prints (its checks include the timer periods measured on the
guest's clock, xenstore requests and upcalls, so a lost event or a clock jump shows).
"""

import io
import os
import subprocess
import sys
import time

import pytest

from pyvmm.errors import ConfigError, MigrationError, MigrationStreamError
from pyvmm.machine import PV_DEVICE, Machine, VmConfig
from pyvmm.migrate import snapshot
from pyvmm.pv.xs_wire import XsType
from tests.migrate.live import LiveMigration

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PVGUEST = os.path.join(ROOT, "guests", "build", "pvguest.elf")
POWEROFF = (0, "guest powered off (SCHEDOP_shutdown poweroff)")


def _machine(console):
    return Machine(VmConfig(kernel=PVGUEST, pv=True, console=console))


@pytest.fixture(scope="module")
def unmigrated():
    out = []
    assert _machine(out.append).run() == POWEROFF
    text = b"".join(out)
    assert text.endswith(b"checks passed\n") and b"FAIL" not in text
    return text


def _paused_after(marker, out):
    """A PV Machine paused right after its console printed ``marker``, with what it
    printed so far."""
    m = Machine(VmConfig(kernel=PVGUEST, pv=True, console=lambda data: _watch(data)))

    def _watch(data):
        out.append(data)
        if marker in data and not m.vcpu.pause_requested:      # once: the output goes on later
            m.vcpu.request_pause()
    assert m.run() is None, "the guest ended before the pause"
    return m


# Early (between xenstore requests), after the timer test, and while the guest waits
# for domain 0 with its one-shot timer armed (data/gref and data/port published).
@pytest.mark.parametrize("marker", [b"ok xenstore_read_domid", b"timer: 5 upcalls", b"grant: ref 8"])
def test_save_mid_run_and_restore_prints_what_an_unmigrated_run_prints(marker, tmp_path, unmigrated):
    src = []
    m = _paused_after(marker, src)
    m.save(tmp_path / "pv.snap")
    m.close()
    dst = []
    restored = Machine.restore(tmp_path / "pv.snap", console=dst.append)
    assert restored.pv.guest.upcall_vector == 0xF3          # HVM_PARAM_CALLBACK_IRQ survived
    assert restored.run() == POWEROFF
    assert b"".join(src) and b"".join(src) + b"".join(dst) == unmigrated


def test_the_snapshot_carries_the_pv_records(tmp_path):
    m = _paused_after(b"grant: ref 8", [])
    try:
        snap = m.snapshot()
        domid = m.pv.guest.domid
        assert snap.config["pv"] is True and set(snap.grant_tables) == set(snap.event_channels) == {domid}
        assert snap.devices[PV_DEVICE]["upcall_vector"] == 0xF3 and snap.devices[PV_DEVICE]["timer_fired"] >= 5
        assert [n[0] for n in snap.xenstore][:1] == [f"/local/domain/{domid}"]
        assert (f"/local/domain/{domid}/data/gref", b"8", f"n{domid}") in snap.xenstore
    finally:
        m.close()


def test_restore_through_the_cli(tmp_path, unmigrated):
    src = []
    m = _paused_after(b"timer: 5 upcalls", src)
    m.save(tmp_path / "pv.snap")
    m.close()
    done = subprocess.run([sys.executable, "-m", "pyvmm.cli", "restore", str(tmp_path / "pv.snap")],
                          capture_output=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert b"".join(src) + done.stdout == unmigrated


def test_live_migration_mid_run_prints_what_an_unmigrated_run_prints(unmigrated):
    live = LiveMigration(timeout=20)
    src, dst = live.src, live.dst
    live.start(_machine(live.console))
    time.sleep(0.1)
    live.migrate()
    machine, stats = live.arrived(20)
    assert stats["status"] == "completed"
    assert machine.run() == POWEROFF
    assert b"".join(src) + b"".join(dst) == unmigrated


# ---- what is refused ---------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_pv():
    """A PV snapshot as read back from its file (pages, not live memory)."""
    m = _paused_after(b"grant: ref 8", [])
    out = io.BytesIO()
    try:
        snapshot.write_snapshot(out, m.snapshot())
    finally:
        m.close()
    return out.getvalue()


def _pv_snapshot(saved):
    return snapshot.read_snapshot(io.BytesIO(saved))


@pytest.mark.parametrize("change, problem", [
    (lambda s: s.devices[PV_DEVICE].update(domid=5), r"'domid': 5, but this guest is domain 1"),
    (lambda s: s.devices[PV_DEVICE].update(upcall_vector=3), r"0x3 is an exception vector"),
    (lambda s: s.devices[PV_DEVICE]["console"].update(bytes_out=-1), r"console backend state field 'bytes_out'"),
    (lambda s: s.devices[PV_DEVICE].update(released=[1 << 40]), r"'released\[0\]'"),
    (lambda s: s.xenstore.insert(1, ("/local/domain/2/x", b"", "n2")), r"is not below /local/domain/1"),
    (lambda s: s.xenstore.append(("/local/domain/1/a/b", b"", "n1")), r"comes before its parent"),
    (lambda s: s.xenstore.append(("/local/domain/1/z", b"", "x1")), r"permissions 'x1'"),
    (lambda s: s.devices.pop(PV_DEVICE), r"needs the 'pv' device"),
    (lambda s: s.grant_tables.clear(), r"needs the 'pv' device, one domain's grant table"),
])
def test_a_damaged_pv_snapshot_is_refused(saved_pv, change, problem):
    snap = _pv_snapshot(saved_pv)
    change(snap)
    with pytest.raises(MigrationStreamError, match=problem):
        Machine.from_snapshot(snap, console=lambda data: None)


def test_pv_state_in_a_snapshot_of_a_non_pv_guest_is_refused(saved_pv):
    snap = _pv_snapshot(saved_pv)
    snap.config["pv"] = False
    with pytest.raises(MigrationStreamError, match="PV .* state, but its config is not a PV guest's"):
        Machine.from_snapshot(snap)


def test_an_open_xenstore_transaction_refuses_the_save_and_the_vm_runs_on(tmp_path, unmigrated):
    out = []
    m = _paused_after(b"grant: ref 8", out)
    conn = m.pv.xenstore_conn
    m.pv.xenstore.dispatch(conn, XsType.XS_TRANSACTION_START, 0, b"\0")   # as the guest would
    with pytest.raises(MigrationError, match="1 open xenstore transaction"):
        m.save(tmp_path / "pv.snap")
    assert not (tmp_path / "pv.snap").exists()
    conn.transactions.clear()
    assert m.run() == POWEROFF and b"".join(out) == unmigrated


def test_a_migration_the_destination_cannot_build_is_refused(tmp_path):
    """The begin record names a kernel the destination does not have: the receiver
    refuses at once (nothing half-built is left) and the source runs on."""
    live = LiveMigration(timeout=10)
    m = _machine(live.console)
    m.config.kernel = str(tmp_path / "gone.elf")
    target = live.start(m)
    live.migrate()
    status = live.wait(20)
    [error] = live.received
    assert isinstance(error, (MigrationError, ConfigError)) and "the VM cannot be built here" in str(error)
    assert status == POWEROFF
    assert target.info_migrate()["status"] == "failed" and b"checks passed" in b"".join(live.src)


def test_snapshot_config_names_pv():
    m = _machine([].append)
    try:
        assert m.snapshot_config()["pv"] is True
        snapshot.check_config(m.snapshot_config(), m.memory.size)
    finally:
        m.close()
