"""UDP ports on 127.0.0.1 for tests that put a vif (or a peer process) on a UDP link:
ports nothing holds right now, and whether one is still held."""

import socket

from pyvmm.devices.net.bench import free_udp_ports  # noqa: F401  (re-exported for the tests)


def port_is_free(port):
    """True when nothing holds 127.0.0.1:``port`` (UDP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
