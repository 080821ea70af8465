"""xs_wire: message framing, payload strings and the byte rings of the xenstore page."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.errors import RingError
from pyvmm.pv import xs_wire
from pyvmm.pv.xs_wire import (XENSTORE_DOMAIN_INTERFACE, XENSTORE_RING_SIZE, XsRingPage, XsType,
                              decode_header, encode_message, join_strings, split_strings)


def test_message_header_is_four_le_u32_then_payload():
    msg = encode_message(XsType.XS_READ, 7, 3, join_strings("device/vbd"))
    assert msg[:16] == struct.pack("<IIII", 2, 7, 3, 11) and msg[16:] == b"device/vbd\0"
    assert decode_header(msg) == (2, 7, 3, 11)


def test_oversize_len_is_refused_both_ways():
    with pytest.raises(RingError, match="len 4097 exceeds XENSTORE_PAYLOAD_MAX"):
        decode_header(struct.pack("<IIII", 2, 1, 0, 4097))
    with pytest.raises(RingError, match="payload of 5000 bytes"):
        encode_message(XsType.XS_WRITE, 1, 0, b"x" * 5000)


def test_payload_strings():
    assert join_strings("a", b"bc") == b"a\0bc\0"
    assert split_strings(b"a\0bc\0") == [b"a", b"bc"]
    assert split_strings(b"a\0bc") == [b"a", b"bc"]
    assert split_strings(b"") == [] and split_strings(b"\0") == [b""]


def test_error_table_order_is_the_headers():
    assert xs_wire.XSD_ERRORS[0] == "EINVAL" and xs_wire.XSD_ERRORS[-1] == "EPERM"
    assert xs_wire.XSD_ERRNO["ENOENT"] == 2


def _page():
    buf = bytearray(4096)
    page = XsRingPage(buf)
    page.reset()
    return buf, page


@settings(max_examples=100, deadline=None)
@given(chunks=st.lists(st.binary(min_size=0, max_size=700), max_size=12),
       start=st.integers(0, 0xFFFFFFFF))
def test_bytes_cross_the_ring_in_order_with_wrap(chunks, start):
    buf, page = _page()
    for name in ("req_cons", "req_prod"):
        page.set(name, start)
    sent = bytearray()
    received = bytearray()
    for chunk in chunks:
        n = page.client_write(chunk)
        assert n == min(len(chunk), XENSTORE_RING_SIZE - (len(sent) - len(received)))
        sent += chunk[:n]
        received += page.server_read(limit=len(chunk) // 2 + 1)
    received += page.server_read()
    assert received == sent


def test_hostile_indices_raise_and_move_nothing():
    buf, page = _page()
    page.set("req_prod", 5000)
    with pytest.raises(RingError, match="req ring: producer 0x1388 is 0x1388 bytes ahead"):
        page.server_read()
    assert page.get("req_cons") == 0
    page.set("rsp_cons", 10)            # consumer "ahead" of the producer
    with pytest.raises(RingError, match="rsp ring"):
        page.server_write(b"hello")
    assert page.get("rsp_prod") == 0


def test_page_layout_offsets():
    buf, page = _page()
    page.set("rsp_prod", 0x11223344)
    off = XENSTORE_DOMAIN_INTERFACE.offsetof("rsp_prod")
    assert off == 2060 and buf[off:off + 4] == bytes.fromhex("44332211")
    assert page.get("server_features") == 3 and page.get("connection") == 0
    with pytest.raises(RingError, match="must be writable"):
        XsRingPage(bytes(4096))
