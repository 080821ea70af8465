"""The control socket's target for a running Machine: run state, pause/resume, save, migrate, quit.

Responsibility: drive one Machine from the control server's thread (the
ControlTarget protocol of pyvmm/control/commands.py). The target owns the thread
that runs the vCPU: ``start()`` runs ``Machine.run`` there; a pause asks the vCPU
to leave its run loop between guest slices (``Vcpu.request_pause``), which leaves
the Machine open and consistent, so ``save`` can write it and ``resume`` can run it
again on a new thread.

Invariants:
- the state is one of "running", "paused", "shutdown", changed only under the lock;
  STOP, RESUME and SHUTDOWN are emitted once per change, SHUTDOWN exactly once;
- ``save`` only writes a paused VM (a running one is refused with a message);
- while a migration runs (``migrate``: pre-copy on its own thread), pause, resume,
  save and quit are refused; a completed migration shuts the VM down here, a failed
  one leaves it as it was;
- once shut down, every command but ``status`` is refused and the Machine is closed;
- ``done`` is set when the VM has shut down (the VMM may then exit).
"""

import threading
import time

from pyvmm.errors import PyvmmError
from pyvmm.migrate import precopy
from pyvmm.mm.layout import PAGE_SIZE

PAUSE_SOFT_S = 0.005       # a soft kick stops the guest at its next exit; after this a forced one
PAUSE_TIMEOUT_S = 5.0


class MachineTarget:
    """ControlTarget for ``machine``; ``emit(event, data)`` reports state changes
    (ControlServer.emit; set it with ``attach``)."""

    def __init__(self, machine, emit=None):
        self.machine = machine
        self._emit = emit
        self._lock = threading.Lock()
        self._state = "paused"          # until start()
        self._thread = None
        self._since = time.monotonic()
        self.result = None              # (status, reason) once the guest has stopped
        self._migration = {"status": "none"}    # the current or last migration (info_migrate)
        self.done = threading.Event()

    def attach(self, emit):
        self._emit = emit

    def _event(self, name, data=None):
        if self._emit is not None:
            self._emit(name, data)

    # ---- running the vCPU ----
    def start(self):
        """Run (or resume) the guest on a new thread."""
        self._state = "running"
        self._thread = threading.Thread(target=self._run, name="pyvmm-vcpu", daemon=True)
        self._thread.start()

    def _run(self):
        try:
            result = self.machine.run()
        except Exception as e:          # a VMM bug: report it as the end of the VM
            result = (1, f"the VMM failed: {type(e).__name__}: {e}")
        if result is None:
            return                      # paused: pause() reports it
        self._finish(result)

    def _finish(self, result):
        with self._lock:
            if self._state == "shutdown":
                return
            self._state = "shutdown"
            self.result = result
        self.machine.close()
        self._event("SHUTDOWN", {"reason": result[1], "status": result[0]})
        self.done.set()

    def wait(self, timeout=None):
        """Wait until the VM has shut down; its (status, reason)."""
        self.done.wait(timeout)
        return self.result

    # ---- ControlTarget ----
    def status(self):
        vcpu = self.machine.vcpu
        return {"status": self._state, "exits": vcpu.stats.total, "uptime": round(time.monotonic() - self._since, 3)}

    def _require(self, state, action):
        if self._state != state:
            now = "has shut down" if self._state == "shutdown" else f"is {self._state}"
            raise PyvmmError(f"cannot {action}: the VM {now}")

    def _stop_vcpu(self):
        """Stop the running vCPU between guest slices; the state becomes "paused"."""
        with self._lock:
            self._require("running", "pause")
            thread = self._thread
        self.machine.vcpu.request_pause()
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        thread.join(PAUSE_SOFT_S)
        while thread.is_alive() and time.monotonic() < deadline:
            # a guest spinning without exits only stops for a forced kick
            self.machine.engine.kick(force=True)
            thread.join(PAUSE_SOFT_S)
        if thread.is_alive():
            raise PyvmmError(f"the vCPU did not stop within {PAUSE_TIMEOUT_S} s")
        with self._lock:
            if self._state == "shutdown":
                raise PyvmmError("cannot pause: the VM shut down meanwhile")
            self._state = "paused"

    def _start_vcpu(self):
        with self._lock:
            self._require("paused", "resume")
            self.start()

    def _idle(self, action):
        if self._migration.get("status") in ("setup", "active"):
            raise PyvmmError(f"cannot {action}: a migration is in progress")

    def pause(self):
        self._idle("pause")
        self._stop_vcpu()
        self._event("STOP")

    def resume(self):
        self._idle("resume")
        self._start_vcpu()
        self._event("RESUME")

    def save(self, path):
        self._idle("save")
        with self._lock:
            self._require("paused", "save (pause it first)")
            size = self.machine.save(path)
        return {"file": path, "bytes": size}

    def migrate(self, host, port):
        """Live-migrate to a `pyvmm receive` at host:port on a background thread
        (MIGRATION events tell how it goes); a migrated VM shuts down here."""
        self._idle("migrate")
        with self._lock:
            if self._state == "shutdown":
                raise PyvmmError("cannot migrate: the VM has shut down")
            self._migration = {"status": "setup"}
        self._event("MIGRATION", {"status": "setup"})
        threading.Thread(target=self._migrate, args=(host, port), name="pyvmm-migrate", daemon=True).start()

    def _migrate(self, host, port):
        def progress(p):
            info = {"status": "active", "round": p["round"], "transferred": p["bytes"],
                    "remaining": p["dirty_pages"]}
            self._migration = info
            self._event("MIGRATION", info)

        self._migration = {"status": "active"}
        try:
            stats = precopy.migrate(_MachineSource(self), (host, port), progress=progress)
        except Exception as e:        # MigrationError, or the VM shut down meanwhile
            self._migration = {"status": "failed", "error": str(e)}
            self._event("MIGRATION", self._migration)
            return
        self._migration = {"status": "completed", "round": stats["rounds"], "transferred": stats["total_bytes"],
                           "downtime-ms": stats["downtime_ms"]}
        self._event("MIGRATION", self._migration)
        self._finish((0, f"migrated to {host}:{port}"))

    def info_migrate(self):
        return dict(self._migration)

    def quit(self):
        self._idle("quit")
        with self._lock:
            if self._state == "shutdown":
                raise PyvmmError("cannot quit: the VM has already shut down")
            running = self._state == "running"
            thread = self._thread
        result = (0, "quit through the control socket")
        if running:
            self.machine.vcpu.request_stop(*result)
            thread.join(PAUSE_SOFT_S)
            if thread.is_alive():
                self.machine.engine.kick(force=True)
            thread.join(PAUSE_TIMEOUT_S)
            if thread.is_alive():
                raise PyvmmError(f"the vCPU did not stop within {PAUSE_TIMEOUT_S} s")
            if self.machine.vcpu.paused:        # a pause raced with the quit
                self._finish(result)
        else:
            self._finish(result)


class _MachineSource:
    """A MachineTarget's Machine as pre-copy's SourceVm (pyvmm/migrate/precopy.py).
    The dirty log may only change while the vCPU is out of the guest, so each call
    stops it between slices for the call's duration (a few ms a round)."""

    def __init__(self, target):
        self._target = target
        machine = target.machine
        self._machine = machine
        self.memory = machine.memory.view
        self.page_count = machine.memory.size // PAGE_SIZE
        self._was_paused = target.status()["status"] == "paused"
        self._paused = self._was_paused

    def _quiet(self, fn):
        if self._paused:
            return fn()
        self._target._stop_vcpu()
        try:
            return fn()
        finally:
            self._target._start_vcpu()

    def start_dirty_log(self):
        self._quiet(self._machine.start_dirty_log)

    def read_dirty_log(self):
        return self._quiet(self._machine.read_dirty_log)

    def stop_dirty_log(self):
        self._quiet(self._machine.stop_dirty_log)

    def pause(self):
        if not self._paused:
            self._target._stop_vcpu()
            self._paused = True
        self._machine.drain_backends()      # their RAM writes go into the final round

    def resume(self):
        # the destination did not take the images and addresses: open and bind them again
        problems = self._machine.reclaim_backends()
        if self._paused and not self._was_paused:
            self._paused = False
            self._target._start_vcpu()
        if problems:                        # the VM runs, but says what it lost
            raise PyvmmError("the VM runs, but " + "; ".join(problems))

    def save_devices(self):
        state = self._machine.save_state()
        self._machine.release_backends()    # images flushed by the save; the destination opens them next
        return state

    def config(self):
        return {**self._machine.snapshot_config(), "ram_size": self._machine.memory.size}
