"""The VMM's control socket, in the style of QEMU's QMP.

- ``qmp``: the wire format (greeting, requests, replies, events, line framing).
- ``commands``: the commands and the ControlTarget protocol they drive.
- ``server``: ControlServer, the unix socket served from a background thread.
- ``client``: ControlClient and ``ctl_main`` (``pyvmm ctl SOCKET COMMAND``).
"""

from pyvmm.control.client import ControlClient, ctl_main
from pyvmm.control.commands import ControlTarget
from pyvmm.control.server import ControlServer

__all__ = ["ControlClient", "ControlServer", "ControlTarget", "ctl_main"]
