"""Network device ring ABI (xen/include/public/io/netif.h): layouts and constants only.

Responsibility: the byte layout of the netif transmit, receive and control ring
entries and the extra-info slot, their flag bits and status numbers, and the three
rings (``DEFINE_RING_TYPES(netif_tx/netif_rx/xen_netif_ctrl, ...)``) as
``RingLayout`` for ``devices/ring.py``. The backend lives elsewhere.

Invariants: every layout matches gcc's for the x86-64 header byte for byte
(tests/devices/test_ring_abi.py compiles the real header and compares).
"""

from pyvmm.devices.ring import RingLayout
from pyvmm.pv.cstruct import Array, Struct, Union, i16, u8, u16, u32

__all__ = ["NETIF_TX_REQUEST", "NETIF_TX_RESPONSE", "NETIF_RX_REQUEST", "NETIF_RX_RESPONSE",
           "NETIF_EXTRA_INFO", "NETIF_CTRL_REQUEST", "NETIF_CTRL_RESPONSE", "NETIF_GREF",
           "NETIF_TX_RING", "NETIF_RX_RING", "NETIF_CTRL_RING", "LAYOUTS"]

XEN_NETIF_NR_SLOTS_MIN = 18
XEN_NETIF_MAX_TX_SIZE = 0xFFFF

# Transmit request flags (netif.h, NETTXF_*).
NETTXF_csum_blank = 1 << 0
NETTXF_data_validated = 1 << 1
NETTXF_more_data = 1 << 2
NETTXF_extra_info = 1 << 3

# Receive response flags (netif.h, NETRXF_*).
NETRXF_data_validated = 1 << 0
NETRXF_csum_blank = 1 << 1
NETRXF_more_data = 1 << 2
NETRXF_extra_info = 1 << 3
NETRXF_gso_prefix = 1 << 4

# Extra-info slot types, flags and GSO types (netif.h).
XEN_NETIF_EXTRA_TYPE_NONE = 0
XEN_NETIF_EXTRA_TYPE_GSO = 1
XEN_NETIF_EXTRA_TYPE_MCAST_ADD = 2
XEN_NETIF_EXTRA_TYPE_MCAST_DEL = 3
XEN_NETIF_EXTRA_TYPE_HASH = 4
XEN_NETIF_EXTRA_TYPE_MAX = 5
XEN_NETIF_EXTRA_FLAG_MORE = 1 << 0
XEN_NETIF_GSO_TYPE_NONE = 0
XEN_NETIF_GSO_TYPE_TCPV4 = 1
XEN_NETIF_GSO_TYPE_TCPV6 = 2

# Response status (netif.h, NETIF_RSP_*).
NETIF_RSP_DROPPED = -2
NETIF_RSP_ERROR = -1
NETIF_RSP_OKAY = 0
NETIF_RSP_NULL = 1

# Control ring request types and status (netif.h, XEN_NETIF_CTRL_*).
XEN_NETIF_CTRL_TYPE_INVALID = 0
XEN_NETIF_CTRL_TYPE_GET_HASH_FLAGS = 1
XEN_NETIF_CTRL_TYPE_SET_HASH_FLAGS = 2
XEN_NETIF_CTRL_TYPE_SET_HASH_KEY = 3
XEN_NETIF_CTRL_TYPE_GET_HASH_MAPPING_SIZE = 4
XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING_SIZE = 5
XEN_NETIF_CTRL_TYPE_SET_HASH_MAPPING = 6
XEN_NETIF_CTRL_TYPE_SET_HASH_ALGORITHM = 7
XEN_NETIF_CTRL_TYPE_GET_GREF_MAPPING_SIZE = 8
XEN_NETIF_CTRL_TYPE_ADD_GREF_MAPPING = 9
XEN_NETIF_CTRL_TYPE_DEL_GREF_MAPPING = 10
XEN_NETIF_CTRL_STATUS_SUCCESS = 0
XEN_NETIF_CTRL_STATUS_NOT_SUPPORTED = 1
XEN_NETIF_CTRL_STATUS_INVALID_PARAMETER = 2
XEN_NETIF_CTRL_STATUS_BUFFER_OVERFLOW = 3
XEN_NETIF_CTRLF_GREF_readonly = 1 << 0

_GRANT_REF = u32           # grant_table.h: typedef uint32_t grant_ref_t;

# struct netif_tx_request
NETIF_TX_REQUEST = Struct("netif_tx_request", [
    ("gref", _GRANT_REF), ("offset", u16), ("flags", u16), ("id", u16), ("size", u16)])

# struct netif_extra_info (fits in both a tx request and an rx response slot)
NETIF_EXTRA_INFO = Struct("netif_extra_info", [
    ("type", u8), ("flags", u8),
    ("u", Union("netif_extra_info_u", [
        ("gso", Struct("netif_extra_gso", [
            ("size", u16), ("type", u8), ("pad", u8), ("features", u16)])),
        ("mcast", Struct("netif_extra_mcast", [("addr", Array(u8, 6))])),
        ("hash", Struct("netif_extra_hash", [
            ("type", u8), ("algorithm", u8), ("value", Array(u8, 4))])),
        ("pad", Array(u16, 3)),
    ])),
])

# struct netif_tx_response, netif_rx_request, netif_rx_response
NETIF_TX_RESPONSE = Struct("netif_tx_response", [("id", u16), ("status", i16)])
NETIF_RX_REQUEST = Struct("netif_rx_request", [("id", u16), ("pad", u16), ("gref", _GRANT_REF)])
NETIF_RX_RESPONSE = Struct("netif_rx_response", [
    ("id", u16), ("offset", u16), ("flags", u16), ("status", i16)])

# struct xen_netif_ctrl_request / _response / xen_netif_gref
NETIF_CTRL_REQUEST = Struct("xen_netif_ctrl_request", [
    ("id", u16), ("type", u16), ("data", Array(u32, 3))])
NETIF_CTRL_RESPONSE = Struct("xen_netif_ctrl_response", [
    ("id", u16), ("type", u16), ("status", u32), ("data", u32)])
NETIF_GREF = Struct("xen_netif_gref", [("ref", _GRANT_REF), ("flags", u16), ("status", u16)])

# DEFINE_RING_TYPES(netif_tx, ...), (netif_rx, ...), (xen_netif_ctrl, ...)
NETIF_TX_RING = RingLayout("netif_tx", NETIF_TX_REQUEST, NETIF_TX_RESPONSE)
NETIF_RX_RING = RingLayout("netif_rx", NETIF_RX_REQUEST, NETIF_RX_RESPONSE)
NETIF_CTRL_RING = RingLayout("xen_netif_ctrl", NETIF_CTRL_REQUEST, NETIF_CTRL_RESPONSE)

LAYOUTS = [
    ("netif_tx_request_t", NETIF_TX_REQUEST),
    ("netif_extra_info_t", NETIF_EXTRA_INFO),
    ("netif_tx_response_t", NETIF_TX_RESPONSE),
    ("netif_rx_request_t", NETIF_RX_REQUEST),
    ("netif_rx_response_t", NETIF_RX_RESPONSE),
    ("struct xen_netif_ctrl_request", NETIF_CTRL_REQUEST),
    ("struct xen_netif_ctrl_response", NETIF_CTRL_RESPONSE),
    ("struct xen_netif_gref", NETIF_GREF),
] + NETIF_TX_RING.layouts() + NETIF_RX_RING.layouts() + NETIF_CTRL_RING.layouts()
