"""Network devices: ``Netback`` serves the netif protocol (io/netif.h) from domain 0,
``VSwitch`` connects vifs and endpoints, ``UdpEndpoint`` joins two pyvmm processes."""

from pyvmm.devices.net.endpoint import UdpEndpoint
from pyvmm.devices.net.netback import Netback
from pyvmm.devices.net.vswitch import VSwitch

__all__ = ["Netback", "VSwitch", "UdpEndpoint"]
