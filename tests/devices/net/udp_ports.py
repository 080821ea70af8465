"""UDP ports on 127.0.0.1 for tests that put a vif (or a peer process) on a UDP link:
ports nothing holds right now, and whether one is still held."""

import socket


def free_udp_ports(n):
    """``n`` distinct ports the host just handed out for 127.0.0.1 and let go again."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_free(port):
    """True when nothing holds 127.0.0.1:``port`` (UDP)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
