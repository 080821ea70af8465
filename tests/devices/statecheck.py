"""Helpers for the device save/restore tests: a state goes through the stream's value
encoding (as a snapshot carries it), and a refused state must leave the device as it was."""

import pytest

from pyvmm.errors import MigrationStreamError
from pyvmm.migrate.stream import decode_value, encode_value


def through_stream(state):
    """``state`` after encoding and decoding as a DEVICE record's value."""
    return decode_value(encode_value(state))


def refused_unchanged(device, state, match):
    """``device.restore(state)`` raises a MigrationStreamError matching ``match`` and the
    device's saved state is the same afterwards."""
    before = device.save()
    with pytest.raises(MigrationStreamError, match=match):
        device.restore(state)
    assert device.save() == before


def with_field(state, path, value):
    """A deep copy of ``state`` with the field at ``path`` (keys / indices) replaced;
    ``value`` None-sentinel ``DELETE`` removes it."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(state, list):
        copy = list(state)
        copy[head] = with_field(state[head], rest, value)
        return copy
    copy = dict(state)
    if value is DELETE and not rest:
        del copy[head]
    else:
        copy[head] = with_field(state[head], rest, value)
    return copy


DELETE = object()
