"""A live migration from a MachineTarget to a Machine received in this same process,
for the tests that migrate a real guest: it owns the listener on 127.0.0.1:0, the
source's and the destination's console output, the trigger that starts the migration
from the source's output, and the receiver thread.

    live = LiveMigration(trigger=b" is at ")
    live.start(Machine(VmConfig(..., console=live.console)))
    machine, stats = live.arrived(90)       # or live.wait(90) and live.received[0] on a failure path
"""

import threading

from pyvmm.control.machine_target import MachineTarget
from pyvmm.machine import Machine
from pyvmm.migrate.receiver import open_listener


class LiveMigration:
    """``trigger``: the bytes whose first appearance in the source's output starts the
    migration (once); None to start it with migrate(). ``receiver``: the Machine class
    that receives (a subclass to fail on purpose); ``timeout`` and ``accept_timeout``
    go to its receive_migration."""

    def __init__(self, trigger=None, receiver=Machine, timeout=30, accept_timeout=60):
        self.trigger = trigger
        self.receiver = receiver
        self.receive_args = {"timeout": timeout, "accept_timeout": accept_timeout}
        self.src, self.dst = [], []
        self.received = []             # [(machine, stats)] or [the receiver's exception]
        self.listener = open_listener("127.0.0.1:0")
        self.target = None
        self.rx = None
        self._triggered = False

    def console(self, data):
        """The source Machine's console: keeps its output and starts the migration when
        the trigger first shows in it."""
        self.src.append(data)
        if self.trigger is not None and not self._triggered and self.target is not None \
                and self.trigger in b"".join(self.src):
            self._triggered = True
            self.migrate()

    def migrate(self):
        self.target.migrate("127.0.0.1", self.listener.getsockname()[1])

    def start(self, machine):
        """Run ``machine`` under a MachineTarget, with the receiver waiting; returns the target."""
        self.target = MachineTarget(machine)
        self.rx = threading.Thread(target=self._receive)
        self.rx.start()
        self.target.start()
        return self.target

    def _receive(self):
        try:
            self.received.append(self.receiver.receive_migration(self.listener, console=self.dst.append,
                                                                 **self.receive_args))
        except Exception as e:     # the test looks at it
            self.received.append(e)
        finally:
            self.listener.close()

    def wait(self, timeout):
        """The source's (status, reason) once it ended, after the receiver finished too
        (each waited for up to ``timeout`` s)."""
        status = self.target.wait(timeout)
        self.rx.join(timeout)
        return status

    def arrived(self, timeout):
        """(the received machine, the receiver's stats), after checking the source says
        it migrated; the receiver's exception is raised if it failed."""
        status = self.wait(timeout)
        assert status[1].startswith("migrated to"), (status, self.target.info_migrate())
        assert self.received, "the receiver has not finished"
        if isinstance(self.received[0], BaseException):
            raise self.received[0]
        return self.received[0]
