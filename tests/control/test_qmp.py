"""The QMP wire format: framing, decoding, request checks, message shapes."""

import json

import pytest
from hypothesis import given, settings, strategies as st

from pyvmm.control import qmp
from pyvmm.errors import ControlCommandError


def test_lines_split_across_reads_and_crlf_dropped():
    buf = qmp.LineBuffer(100)
    assert buf.feed(b'{"a"') == []
    assert buf.feed(b': 1}\r\n{"b": 2}\n{"c"') == [b'{"a": 1}', b'{"b": 2}']
    assert buf.feed(b"}\n") == [b'{"c"}']


def test_overlong_line_reported_once_then_stream_usable():
    buf = qmp.LineBuffer(8)
    assert buf.feed(b"x" * 5) == []
    assert buf.feed(b"x" * 5) == [qmp.OVERLONG]
    assert buf.feed(b"x" * 50) == []                # still the same line: skipped
    assert buf.feed(b"yy\nok\n") == [b"ok"]
    assert buf.feed(b"z" * 9 + b"\nfine\n") == [qmp.OVERLONG, b"fine"]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")), max_size=8),
       st.lists(st.integers(1, 30), min_size=1, max_size=10))
def test_any_chunking_gives_the_same_lines(lines, cuts):
    stream = b"".join(line + b"\n" for line in lines)
    buf = qmp.LineBuffer(1000)
    got, pos, i = [], 0, 0
    while pos < len(stream):
        step = cuts[i % len(cuts)]
        got += buf.feed(stream[pos:pos + step])
        pos, i = pos + step, i + 1
    assert got == [line[:-1] if line.endswith(b"\r") else line for line in lines]


@pytest.mark.parametrize("line, says", [
    (b'{"execute": }', "JSON parse error"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b'{"a": NaN}', "NaN is not a JSON value"),
    (b'{"a": Infinity}', "Infinity is not a JSON value"),
    (b"[" * 100000 + b"]" * 100000, "JSON parse error"),
    (b"\x01", "JSON parse error"),
    (b"{'execute': 'stop'}", "JSON parse error"),
])
def test_malformed_json_is_a_generic_error(line, says):
    with pytest.raises(ControlCommandError) as e:
        qmp.decode_json(line)
    assert e.value.error_class == qmp.GENERIC_ERROR
    assert says in e.value.desc


def test_huge_integer_is_a_generic_error_not_a_crash():
    with pytest.raises(ControlCommandError, match="JSON parse error"):
        qmp.decode_json(b'{"id": ' + b"9" * 10000 + b"}")


@pytest.mark.parametrize("obj, says", [
    ([1], "must be a JSON object"),
    ("stop", "must be a JSON object"),
    ({"id": 1}, "lacks member 'execute'"),
    ({"execute": 5}, "'execute' must be a string"),
    ({"execute": "stop", "arguments": []}, "'arguments' must be an object"),
    ({"execute": "stop", "exec-oob": "x"}, "member 'exec-oob' is unexpected"),
])
def test_bad_requests(obj, says):
    with pytest.raises(ControlCommandError, match=says) as e:
        qmp.check_request(obj)
    assert e.value.error_class == qmp.GENERIC_ERROR


def test_request_and_reply_id():
    assert qmp.check_request({"execute": "stop", "id": [1]}) == qmp.Request("stop", {})
    assert qmp.check_request({"execute": "save", "arguments": {"file": "f"}}).arguments == {"file": "f"}
    assert qmp.reply_id({"execute": "x", "id": {"n": 1}}) == {"id": {"n": 1}}
    assert qmp.reply_id([1]) == {}


def test_encode_is_ascii_with_crlf():
    data = qmp.encode({"return": {"name": "v\u00e9m"}})
    assert data.endswith(b"\r\n") and data.count(b"\n") == 1
    data.decode("ascii")
    assert json.loads(data)["return"]["name"] == "v\u00e9m"
    with pytest.raises(ValueError):
        qmp.encode({"return": float("nan")})


def test_event_timestamp_and_optional_data():
    ev = qmp.event("STOP", now_ns=1258551470_802384_999)
    assert ev == {"event": "STOP", "timestamp": {"seconds": 1258551470, "microseconds": 802384}}
    assert qmp.event("MIGRATION", {"status": "active"}, now_ns=5)["data"] == {"status": "active"}


def test_greeting_and_replies():
    g = qmp.greeting((0, 1, 2))
    assert g["QMP"]["capabilities"] == []
    assert g["QMP"]["version"]["pyvmm"] == {"major": 0, "minor": 1, "micro": 2}
    assert qmp.return_reply(None, {"id": 3}) == {"return": {}, "id": 3}
    err = ControlCommandError(qmp.COMMAND_NOT_FOUND, "The command x has not been found")
    assert qmp.error_reply(err, {}) == {"error": {"class": "CommandNotFound",
                                                  "desc": "The command x has not been found"}}
