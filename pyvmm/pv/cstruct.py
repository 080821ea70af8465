"""C struct and union layouts, described once and used to read, write and print them.

Responsibility: turn a C declaration written as a list of (name, type) pairs into
offsets, a size and an alignment computed with the x86-64 System V rules that gcc
uses for the Xen public headers (each member at a multiple of its alignment; the
struct padded to a multiple of its largest member alignment; unions as large as
their largest member). Nothing here knows any particular ABI: the modules that
define Xen structures (``pv/abi.py``, ``devices/ring.py``, ...) cite their headers.

Invariants: a layout never changes after it is built; ``pack`` writes exactly
``size`` bytes; ``unpack`` reads exactly ``size`` bytes; ``layout_lines()`` prints the
``sizeof``/``offsetof`` lines a C program would print for the same declaration, so
a test can diff them against gcc's answer for the real header.
"""

import struct as _struct

__all__ = ["Scalar", "Array", "Struct", "Union", "u8", "u16", "u32", "u64",
           "i8", "i16", "i32", "i64"]


class Scalar:
    """A fixed-width integer type (``uint32_t``...), little-endian as on x86."""

    def __init__(self, cname, fmt):
        self.cname = cname
        self._fmt = "<" + fmt
        self.size = _struct.calcsize(self._fmt)
        self.align = self.size

    def pack_into(self, buf, offset, value):
        _struct.pack_into(self._fmt, buf, offset, value)

    def unpack_from(self, buf, offset=0):
        return _struct.unpack_from(self._fmt, buf, offset)[0]

    def default(self):
        return 0


u8, u16, u32, u64 = (Scalar("uint8_t", "B"), Scalar("uint16_t", "H"),
                     Scalar("uint32_t", "I"), Scalar("uint64_t", "Q"))
i8, i16, i32, i64 = (Scalar("int8_t", "b"), Scalar("int16_t", "h"),
                     Scalar("int32_t", "i"), Scalar("int64_t", "q"))


class Array:
    """``T name[count]``: a list of ``count`` values; ``bytes`` for ``uint8_t`` arrays."""

    def __init__(self, elem, count):
        if count < 0:
            raise ValueError(f"array of {elem.cname} with negative count {count}")
        self.elem = elem
        self.count = count
        self.cname = f"{elem.cname}[{count}]"
        self.size = elem.size * count
        self.align = elem.align

    def _is_bytes(self):
        return self.elem is u8

    def pack_into(self, buf, offset, value):
        if self._is_bytes():
            data = bytes(value)
            if len(data) > self.count:
                raise ValueError(f"{len(data)} bytes do not fit in {self.cname}")
            buf[offset:offset + self.count] = data.ljust(self.count, b"\0")
            return
        if len(value) > self.count:
            raise ValueError(f"{len(value)} elements do not fit in {self.cname}")
        for i in range(self.count):
            item = value[i] if i < len(value) else self.elem.default()
            self.elem.pack_into(buf, offset + i * self.elem.size, item)

    def unpack_from(self, buf, offset=0):
        if self._is_bytes():
            return bytes(buf[offset:offset + self.count])
        return [self.elem.unpack_from(buf, offset + i * self.elem.size) for i in range(self.count)]

    def default(self):
        return b"\0" * self.count if self._is_bytes() else [self.elem.default()] * self.count


def _round_up(value, align):
    return (value + align - 1) // align * align


class _Aggregate:
    """Shared machinery of ``Struct`` and ``Union``: named members at computed offsets."""

    keyword = ""

    def __init__(self, cname, members):
        self.cname = cname
        self.members = list(members)
        names = [name for name, _ in self.members]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.keyword} {cname}: duplicate member names")
        self.align = max((t.align for _, t in self.members), default=1)
        self.offsets = {}
        self.types = dict(self.members)
        self.size = _round_up(self._place(), self.align)
        self._mangled = f"{self.keyword} {cname}"

    def _place(self):
        raise NotImplementedError

    def offsetof(self, name):
        """Offset of member ``name``; a dotted path reaches into nested aggregates."""
        head, _, rest = name.partition(".")
        try:
            offset = self.offsets[head]
        except KeyError:
            raise KeyError(f"{self._mangled} has no member {head!r}") from None
        if rest:
            return offset + self.types[head].offsetof(rest)
        return offset

    def sizeof(self, name=None):
        if name is None:
            return self.size
        head, _, rest = name.partition(".")
        inner = self.types[head]
        return inner.sizeof(rest) if rest else inner.size

    def pack(self, **values):
        buf = bytearray(self.size)
        self.pack_into(buf, 0, values)
        return bytes(buf)

    def pack_into(self, buf, offset, values):
        unknown = set(values) - set(self.types)
        if unknown:
            raise KeyError(f"{self._mangled} has no member(s) {sorted(unknown)}")
        for name, ctype in self.members:
            if name in values:
                ctype.pack_into(buf, offset + self.offsets[name], values[name])

    def unpack(self, data, offset=0):
        if len(data) - offset < self.size:
            raise ValueError(f"{self._mangled} needs {self.size} bytes, got {len(data) - offset}")
        return self.unpack_from(data, offset)

    def unpack_from(self, buf, offset=0):
        return {name: ctype.unpack_from(buf, offset + self.offsets[name])
                for name, ctype in self.members}

    def default(self):
        return {}


class Struct(_Aggregate):
    """A C ``struct`` with natural alignment (no ``#pragma pack``)."""

    keyword = "struct"

    def _place(self):
        offset = 0
        for name, ctype in self.members:
            offset = _round_up(offset, ctype.align)
            self.offsets[name] = offset
            offset += ctype.size
        return offset


class Union(_Aggregate):
    """A C ``union``: every member at offset 0."""

    keyword = "union"

    def _place(self):
        for name, _ in self.members:
            self.offsets[name] = 0
        return max((t.size for _, t in self.members), default=0)


def layout_lines(aggregate, typedef_name=None):
    """The lines a C program prints with ``sizeof``/``offsetof`` for ``aggregate``.

    ``typedef_name`` is the name C code uses for the type (``grant_entry_v1_t``);
    by default ``struct NAME``/``union NAME``. Nested members are printed dotted
    (``offsetof(T, a.b)``), which gcc's ``offsetof`` accepts too.
    """
    cname = typedef_name or f"{aggregate.keyword} {aggregate.cname}"
    lines = [f"sizeof({cname}) = {aggregate.size}"]

    def walk(agg, base, prefix):
        for name, ctype in agg.members:
            path = prefix + name
            offset = base + agg.offsets[name]
            lines.append(f"offsetof({cname}, {path}) = {offset}")
            if isinstance(ctype, _Aggregate):
                walk(ctype, offset, path + ".")

    walk(aggregate, 0, "")
    return lines
