"""cstruct computes C layouts as gcc does, and packs/unpacks them byte for byte."""

import pytest

from pyvmm.pv.cstruct import Array, Struct, Union, layout_lines, u8, u16, u32, u64


def test_natural_alignment_and_tail_padding():
    s = Struct("s", [("a", u8), ("b", u32), ("c", u16), ("d", u64), ("e", u8)])
    assert [s.offsetof(n) for n in "abcde"] == [0, 4, 8, 16, 24]
    assert s.size == 32 and s.align == 8


def test_union_and_nested_members():
    inner = Union("u", [("x", u16), ("y", Array(u8, 6))])
    outer = Struct("o", [("flags", u16), ("u", inner), ("tail", u32)])
    assert inner.size == 6 and inner.align == 2
    assert outer.offsetof("u.y") == 2 and outer.offsetof("tail") == 8 and outer.size == 12
    assert layout_lines(outer, "o_t") == [
        "sizeof(o_t) = 12", "offsetof(o_t, flags) = 0", "offsetof(o_t, u) = 2",
        "offsetof(o_t, u.x) = 2", "offsetof(o_t, u.y) = 2", "offsetof(o_t, tail) = 8"]


def test_pack_unpack_round_trip():
    s = Struct("s", [("flags", u16), ("domid", u16), ("frame", u32), ("ids", Array(u16, 3))])
    raw = s.pack(flags=0x1, domid=7, frame=0xdeadbeef, ids=[1, 2])
    assert raw == bytes.fromhex("0100 0700 efbeadde 0100 0200 0000".replace(" ", "")) + b"\0\0"
    assert s.unpack(raw) == {"flags": 1, "domid": 7, "frame": 0xdeadbeef, "ids": [1, 2, 0]}


def test_bad_input_is_refused():
    s = Struct("s", [("a", u32), ("name", Array(u8, 4))])
    with pytest.raises(KeyError, match="no member"):
        s.pack(b=1)
    with pytest.raises(ValueError, match="do not fit"):
        s.pack(name=b"toolong")
    with pytest.raises(ValueError, match="needs 8 bytes"):
        s.unpack(b"\0" * 7)
    with pytest.raises(ValueError, match="duplicate"):
        Struct("d", [("a", u8), ("a", u8)])
