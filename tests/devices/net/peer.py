"""A second pyvmm process for the two-process network test: one guest (domain 2,
52:54:00:00:00:02, 10.0.0.2) on its own switch, joined to the parent by a UDP endpoint.

    python3 -m tests.devices.net.peer REMOTE SECONDS

It binds 127.0.0.1:0, prints its port on one line, then answers ARP and ICMP echo
from its guest's stack until SECONDS pass or stdin closes; it prints its
endpoint's and netback's counters as its last line.
"""

import json
import select
import sys
import time

from pyvmm.devices.net import UdpEndpoint
from tests.devices.net.netfront import Net, ip_of, mac_of


def main(remote, seconds):
    net = Net(nr_guests=0)
    guest = net.add_guest(2)
    front, back = net.add_vif(guest)
    endpoint = UdpEndpoint("127.0.0.1:0", remote)
    endpoint.connect_to(net.switch)
    print(endpoint.local_address[1], flush=True)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if endpoint.poll(timeout=0.01):
            front.serve(mac_of(2), ip_of(2))
        if select.select([sys.stdin], [], [], 0)[0] and not sys.stdin.readline():
            break
    print(json.dumps({"endpoint": endpoint.stats, "netback": back.stats}), flush=True)
    endpoint.close()


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]))
