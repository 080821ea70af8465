"""Reading a component's saved state back: typed, range-checked fields of a state map.

Responsibility: the one place where ``restore(state)`` methods turn a state map (the
plain values of docs/migration-stream.md, "State maps and values") into checked
Python values. A component names itself once (``StateFields(state, "i8254 PIT")``)
and asks for each field with its type and range; anything missing, of the wrong
type, out of range, or left over raises MigrationStreamError naming the component
and the field, so a hostile or damaged snapshot gives one clear line.

Invariants:
- reading fields never changes the component: ``restore`` methods read every field
  first and assign only when all of them were accepted, so a refused state leaves the
  component exactly as it was;
- ``done()`` refuses keys nobody asked for, so a state from a different layout is
  noticed instead of being half understood.
"""

from pyvmm.errors import MigrationStreamError


class StateFields:
    """Checked access to the fields of one component's state map."""

    def __init__(self, state, component):
        self.component = component
        if not isinstance(state, dict):
            raise MigrationStreamError(f"{component} state: expected a map, got "
                                       f"{type(state).__name__}")
        self.state = state
        self._seen = set()

    def fail(self, name, problem):
        raise MigrationStreamError(f"{self.component} state field {name!r}: {problem}")

    def raw(self, name):
        """The field's value as stored, unchecked (the caller checks it)."""
        if name not in self.state:
            self.fail(name, "missing")
        self._seen.add(name)
        return self.state[name]

    def uint(self, name, limit):
        """An int in 0 .. limit-1."""
        return self._check_int(name, self.raw(name), 0, limit - 1)

    def integer(self, name, low, high):
        """An int in low .. high (inclusive)."""
        return self._check_int(name, self.raw(name), low, high)

    def choice(self, name, allowed):
        """An int or str that is one of ``allowed``."""
        value = self.raw(name)
        if isinstance(value, bool) or value not in allowed:
            self.fail(name, f"{value!r} is not one of {sorted(allowed)}")
        return value

    def optional_uint(self, name, limit):
        """None or an int in 0 .. limit-1."""
        value = self.raw(name)
        return None if value is None else self._check_int(name, value, 0, limit - 1)

    def flag(self, name):
        value = self.raw(name)
        if not isinstance(value, bool):
            self.fail(name, f"{value!r} is not a bool")
        return value

    def blob(self, name, size=None, max_size=None):
        value = self._sized(name, bytes, "bytes", max_size, "bytes")
        if size is not None and len(value) != size:
            self.fail(name, f"{len(value)} bytes, expected {size}")
        return value

    def text(self, name, max_len=4096):
        return self._sized(name, str, "a string", max_len, "characters")

    def uint_list(self, name, limit, max_len):
        """A list of at most ``max_len`` ints, each in 0 .. limit-1."""
        value = self.items(name, max_len)
        return [self._check_int(f"{name}[{i}]", v, 0, limit - 1) for i, v in enumerate(value)]

    def items(self, name, max_len):
        return self._sized(name, list, "a list", max_len, "items")

    def done(self):
        """Refuse keys that no field read asked for."""
        extra = sorted(set(self.state) - self._seen)
        if extra:
            raise MigrationStreamError(f"{self.component} state: unknown field(s) "
                                       f"{', '.join(map(repr, extra[:8]))}")

    def _sized(self, name, kind, what, max_len, unit):
        value = self.raw(name)
        if not isinstance(value, kind):
            self.fail(name, f"a {type(value).__name__}, expected {what}")
        if max_len is not None and len(value) > max_len:
            self.fail(name, f"{len(value)} {unit}, at most {max_len} allowed")
        return value

    def _check_int(self, name, value, low, high):
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(name, f"{value!r} is not an integer")
        if not low <= value <= high:
            self.fail(name, f"{value} is outside {low}..{high}")
        return value
