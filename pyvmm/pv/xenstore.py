"""xenstore in domain 0: the store, its ring connections to guests, and its Python clients.

Responsibility: the hierarchical key/value store Xen domains use to find each other
(docs/misc/xenstore.txt semantics): nodes with values and per-domain permissions,
path validation as xenstored does it, transactions with conflict detection
(EAGAIN), watches with tokens (fired on changes of the watched node or below, and
once when set), the XS_* requests of io/xs_wire.h, one ``XsConnection`` per guest
reading requests from that guest's xenstore ring page and writing replies and watch
events into it, and clients with one API (``LocalClient`` for dom0 backends in
Python, ``RingClient`` speaking the wire protocol the way a guest kernel does).

Invariants:
- Every request, local or from a ring, goes through ``Xenstore.dispatch``; a refused
  request changes nothing and yields an XS_ERROR reply naming the errno.
- Paths are canonical before use: absolute, no trailing or double ``/``, only
  ``[A-Za-z0-9_@/-]``, at most XENSTORE_ABS_PATH_MAX bytes (relative ones at most
  XENSTORE_REL_PATH_MAX and taken relative to ``/local/domain/<domid>``).
- A transaction works on a private copy of the tree, records the generation of each
  node it touched, and commits by replaying its changes only if none of those
  nodes changed meanwhile; otherwise EAGAIN and nothing is applied.
- Watch events are queued while a request runs and delivered after it, so a watch
  callback may itself use the store. Guests only see events for nodes they may read.
- A guest that breaks the ring protocol (impossible indices, a message longer than
  XENSTORE_PAYLOAD_MAX) gets the page's ``error`` field set and its connection
  stopped; other connections and the store are untouched.

Save/restore: ``save()`` lists every node (path, value, permissions in XS_GET_PERMS
order written as one string such as ``n0r1``), parents before children; ``restore``
checks the whole list (canonical absolute paths, each parent listed before its
children, valid permissions) before it replaces the tree. The store's
``save`` carries no watches, transactions or connections; a guest's connection
carries its own (``XsConnection.save``/``restore``: its watches and the bytes in
flight on its ring, as plain values; an open transaction refuses the save), so a
restored guest goes on without re-registering anything.
"""

import itertools
import re
from collections import deque
from typing import NamedTuple

from pyvmm.errors import MigrationError, MigrationStreamError, RingError, XenstoreError
from pyvmm.migrate.state import StateFields
from pyvmm.pv.xs_wire import (HEADER_SIZE, XENSTORE_ABS_PATH_MAX, XENSTORE_ERROR_PROTO,
                              XENSTORE_ERROR_RINGIDX, XENSTORE_PAYLOAD_MAX, XENSTORE_RECONNECT,
                              XENSTORE_REL_PATH_MAX, XENSTORE_SERVER_FEATURE_ERROR,
                              XENSTORE_SERVER_FEATURE_RECONNECTION, XsRingPage, XsType,
                              decode_header, encode_message, join_strings, split_strings)

__all__ = ["Perm", "Xenstore", "XsConnection", "LocalClient", "RingClient", "domain_path"]

INTRODUCE_DOMAIN = "@introduceDomain"
RELEASE_DOMAIN = "@releaseDomain"
_SPECIAL_WATCHES = (INTRODUCE_DOMAIN, RELEASE_DOMAIN)
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-/_@")

# Per-guest quotas (dom0 is not limited), as xenstored's defaults bound them.
MAX_NODES_PER_DOMAIN = 1000
MAX_WATCHES_PER_DOMAIN = 128
MAX_TRANSACTIONS_PER_DOMAIN = 10
SERVER_FEATURES = XENSTORE_SERVER_FEATURE_RECONNECTION | XENSTORE_SERVER_FEATURE_ERROR
MAX_QUEUED_OUTPUT = 64 * 1024    # reply/event bytes a guest may leave unread before reset


def domain_path(domid):
    """``GET_DOMAIN_PATH``: the home of a domain's relative paths."""
    return f"/local/domain/{domid}"


class Perm(NamedTuple):
    """One permission entry: ``domid`` and access ``n`` (none), ``r``, ``w`` or ``b`` (both).

    The first entry of a node's list names its owner (full access) and the access
    of every domain not listed after it.
    """

    domid: int
    access: str

    def __str__(self):
        return f"{self.access}{self.domid}"

    @classmethod
    def parse(cls, text):
        if len(text) < 2 or text[0] not in "nrwb" or not text[1:].isdigit():
            raise XenstoreError("EINVAL", f"permission {text!r} is not [nrwb]<domid>")
        return cls(int(text[1:]), text[0])


_PERMS = re.compile(r"([nrwb])(\d{1,5})")


def _parse_perms(text):
    """A permission string as ``save`` writes it (``n0r1``) as a Perm tuple."""
    if not isinstance(text, str) or not re.fullmatch(f"(?:{_PERMS.pattern})+", text):
        raise XenstoreError("EINVAL", f"permissions {text!r} are not [nrwb]<domid>...")
    perms = tuple(Perm(int(d), a) for a, d in _PERMS.findall(text))
    if any(p.domid >= 0x7FF0 for p in perms):
        raise XenstoreError("EINVAL", f"permissions {text!r} name a domid above 0x7fef")
    return perms


def _allows(perms, domid, want):
    """Can ``domid`` have access ``want`` ("r" or "w") under ``perms``?"""
    if domid == 0 or perms[0].domid == domid:
        return True
    access = perms[0].access
    for perm in perms[1:]:
        if perm.domid == domid:
            access = perm.access
            break
    return access == "b" or access == want


class _Node:
    __slots__ = ("value", "perms", "children", "gen")

    def __init__(self, value, perms, gen):
        self.value = value
        self.perms = perms
        self.children = []
        self.gen = gen

    def copy(self):
        node = _Node(self.value, self.perms, self.gen)
        node.children = list(self.children)
        return node


def _parent(path):
    head = path.rsplit("/", 1)[0]
    return head or "/"


def _join(parent, name):
    return parent + name if parent == "/" else f"{parent}/{name}"


def _is_below(path, top):
    """``path`` is ``top`` or a descendant of it."""
    return path == top or top == "/" or path.startswith(top + "/")


class _Tree:
    """The nodes, by canonical path. A transaction's copy records what it touched."""

    def __init__(self, nodes, gen_counter, accessed=None):
        self.nodes = nodes
        self._gen = gen_counter
        self.accessed = accessed     # path -> generation first seen (None: absent); tx only

    def lookup(self, path):
        node = self.nodes.get(path)
        if self.accessed is not None and path not in self.accessed:
            self.accessed[path] = node.gen if node else None
        return node

    def copy(self):
        return _Tree({p: n.copy() for p, n in self.nodes.items()}, self._gen, accessed={})

    def bump(self, node):
        node.gen = next(self._gen)

    def owned_by(self, domid):
        return sum(1 for n in self.nodes.values() if n.perms[0].domid == domid)


class _Watch(NamedTuple):
    session: object
    path: str          # as the client gave it (relative paths stay relative in events)
    abs_path: str
    token: str


class _Transaction:
    def __init__(self, tx_id, session, tree):
        self.id = tx_id
        self.session = session
        self.tree = tree
        self.log = []          # (handler, payload) of each successful change, to replay


class _Session:
    """A client of the store: a domain id, its watches and transactions, an event sink."""

    def __init__(self, store, domid):
        self.store = store
        self.domid = domid
        self.transactions = {}

    def deliver(self, path, token):
        raise NotImplementedError

    def home(self):
        return domain_path(self.domid)


class Xenstore:
    """The store and the XS_* request handlers.

    ``introduce_hook(domid, mfn, port)`` maps a guest's ring page for XS_INTRODUCE
    from a ring client and returns ``(shared_buffer, notify)``; without it, only the
    Python API ``introduce()`` can connect guests.
    """

    def __init__(self, introduce_hook=None):
        self._gen = itertools.count(1)
        root_perms = (Perm(0, "n"),)
        self.tree = _Tree({"/": _Node(b"", root_perms, next(self._gen))}, self._gen)
        self.watches = []
        self.connections = {}
        self._introduce_hook = introduce_hook
        self._tx_ids = itertools.count(1)
        self._events = deque()
        self._delivering = False
        for path in ("/local", "/local/domain", "/local/domain/0"):
            self._create(self.tree, None, path, b"")

    # --- save / restore ---------------------------------------------------------

    def save(self):
        """Every node as (path, value bytes, permission string), parents first."""
        out = []
        stack = ["/"]
        while stack:
            path = stack.pop()
            node = self.tree.nodes[path]
            out.append((path, node.value, "".join(map(str, node.perms))))
            stack.extend(_join(path, name) for name in reversed(node.children))
        return out

    def restore(self, nodes):
        """Replace the tree with ``nodes`` as ``save`` listed them (triples); checked in
        full first, and no watch fires."""
        fresh = {}
        for index, item in enumerate(nodes):
            where = f"xenstore node {index}"
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                raise MigrationStreamError(f"{where}: expected (path, value, permissions)")
            path, value, perms = item
            try:
                if not isinstance(path, str) or not path.startswith("/"):
                    raise XenstoreError("EINVAL", f"path {path!r} is not absolute")
                self.canonical(None, path)
                parsed = _parse_perms(perms)
            except XenstoreError as e:
                raise MigrationStreamError(f"{where}: {e.what}") from None
            if not isinstance(value, bytes) or len(value) > XENSTORE_PAYLOAD_MAX:
                raise MigrationStreamError(f"{where} ({path}): value is not bytes of at most "
                                           f"{XENSTORE_PAYLOAD_MAX}")
            if path in fresh:
                raise MigrationStreamError(f"{where}: {path} is listed twice")
            if (path == "/") != (index == 0) or (index and _parent(path) not in fresh):
                raise MigrationStreamError(f"{where}: {path} comes before its parent "
                                           f"(the root must be first)")
            fresh[path] = _Node(value, parsed, next(self._gen))
            if index:
                fresh[_parent(path)].children.append(path.rsplit("/", 1)[1])
        if not fresh:
            raise MigrationStreamError("xenstore: no nodes (the root is always there)")
        self.tree = _Tree(fresh, self._gen)

    # --- paths and permissions -------------------------------------------------

    @staticmethod
    def canonical(session, path, watch=False):
        """Validate ``path`` (str) and make it absolute; EINVAL says what is wrong."""
        if watch and path in _SPECIAL_WATCHES:
            return path
        if not path:
            raise XenstoreError("EINVAL", "empty path")
        bad = set(path) - _PATH_CHARS
        if bad:
            raise XenstoreError("EINVAL", f"path {path[:80]!r} has invalid characters "
                                          f"{''.join(sorted(bad))[:16]!r}")
        if path[0] != "/":
            if len(path) > XENSTORE_REL_PATH_MAX:
                raise XenstoreError("EINVAL", f"relative path of {len(path)} bytes exceeds "
                                              f"XENSTORE_REL_PATH_MAX ({XENSTORE_REL_PATH_MAX})")
            path = f"{session.home()}/{path}"
        if len(path) > XENSTORE_ABS_PATH_MAX:
            raise XenstoreError("EINVAL", f"path of {len(path)} bytes exceeds "
                                          f"XENSTORE_ABS_PATH_MAX ({XENSTORE_ABS_PATH_MAX})")
        if "//" in path or (path.endswith("/") and path != "/"):
            raise XenstoreError("EINVAL", f"path {path[:80]!r} has an empty component")
        return path

    def _get(self, tree, session, path, want):
        node = tree.lookup(path)
        if node is None:
            raise XenstoreError("ENOENT", f"no node {path}")
        if not _allows(node.perms, session.domid, want):
            raise XenstoreError("EACCES", f"domain {session.domid} may not "
                                          f"{'read' if want == 'r' else 'write'} {path}")
        return node

    # --- changes (all go through here so watches fire) -------------------------

    def _changed(self, tree, path, node):
        tree.bump(node)
        if tree is self.tree:
            self._fire(path, node.perms)

    def _create(self, tree, session, path, value):
        """Create ``path`` and any missing ancestors; the nearest existing one must be writable.

        ``session`` None is the store itself (no permission check, no quota). Watches
        fire once, for ``path``; a parent's generation moves (its listing changed).
        """
        missing = []
        cur = path
        while tree.lookup(cur) is None:
            missing.append(cur)
            cur = _parent(cur)
        parent = tree.lookup(cur)
        if session is not None and not _allows(parent.perms, session.domid, "w"):
            raise XenstoreError("EACCES", f"domain {session.domid} may not create {path} "
                                          f"under {cur}")
        perms = parent.perms
        if session is not None and session.domid != 0:
            if tree.owned_by(session.domid) + len(missing) > MAX_NODES_PER_DOMAIN:
                raise XenstoreError("ENOSPC", f"domain {session.domid} would own more than "
                                              f"{MAX_NODES_PER_DOMAIN} nodes")
            perms = (Perm(session.domid, perms[0].access),) + tuple(
                p for p in perms[1:] if p.domid != session.domid)
        for new in reversed(missing):
            node = _Node(value if new == path else b"", perms, next(self._gen))
            tree.nodes[new] = node
            up = tree.nodes[_parent(new)]
            up.children.append(new.rsplit("/", 1)[1])
            tree.bump(up)
        if tree is self.tree:
            self._fire(path, perms)

    def _remove(self, tree, path):
        node = tree.nodes[path]
        perms = node.perms
        doomed = [p for p in tree.nodes if _is_below(p, path)]
        for p in doomed:
            tree.lookup(p)
            del tree.nodes[p]
        up = tree.lookup(_parent(path))
        up.children.remove(path.rsplit("/", 1)[1])
        tree.bump(up)
        if tree is self.tree:
            self._fire(path, perms, removed=True)

    # --- watches ----------------------------------------------------------------

    def _fire(self, path, perms, removed=False):
        for watch in self.watches:
            if _is_below(path, watch.abs_path) if not path.startswith("@") else path == watch.abs_path:
                event = path
            elif removed and _is_below(watch.abs_path, path):
                event = watch.abs_path
            else:
                continue
            if not path.startswith("@") and not _allows(perms, watch.session.domid, "r"):
                continue
            self._queue_event(watch, event)

    def _queue_event(self, watch, abs_event):
        event = abs_event
        if not watch.path.startswith(("/", "@")):
            event = abs_event[len(watch.session.home()) + 1:]
        self._events.append((watch.session, event, watch.token))

    def _deliver(self):
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._events:
                session, path, token = self._events.popleft()
                session.deliver(path, token)
        finally:
            self._delivering = False

    # --- requests -----------------------------------------------------------------

    def dispatch(self, session, msg_type, tx_id, payload):
        """Run one request for ``session``; returns (reply type, reply payload).

        Errors become ``(XS_ERROR, b"ENAME\\0")``; watch events raised by the request
        are delivered once it is done.
        """
        try:
            handler = _HANDLERS.get(msg_type)
            if handler is None:
                raise XenstoreError("EINVAL" if msg_type not in XsType._value2member_map_
                                    else "ENOSYS", f"request type {msg_type}")
            try:
                args = [s.decode() for s in split_strings(payload)]
            except UnicodeDecodeError:
                args = None
            reply = handler(self, session, tx_id, bytes(payload), args)
            result = (XsType(msg_type), reply)
        except XenstoreError as err:
            result = (XsType.XS_ERROR, join_strings(err.errno_name))
        self._deliver()
        return result

    def _args(self, args, count, what):
        if args is None or len(args) < count:
            raise XenstoreError("EINVAL", f"{what} needs {count} NUL-terminated string(s)")
        return args

    def _tree_for(self, session, tx_id):
        if tx_id == 0:
            return self.tree, None
        tx = session.transactions.get(tx_id)
        if tx is None:
            raise XenstoreError("ENOENT", f"domain {session.domid} has no transaction {tx_id}")
        return tx.tree, tx

    def _do_read(self, session, tx_id, payload, args):
        path = self.canonical(session, self._args(args, 1, "XS_READ")[0])
        tree, _ = self._tree_for(session, tx_id)
        return self._get(tree, session, path, "r").value

    def _do_directory(self, session, tx_id, payload, args):
        path = self.canonical(session, self._args(args, 1, "XS_DIRECTORY")[0])
        tree, _ = self._tree_for(session, tx_id)
        reply = join_strings(*self._get(tree, session, path, "r").children)
        if len(reply) > XENSTORE_PAYLOAD_MAX:
            raise XenstoreError("E2BIG", f"directory of {path} is {len(reply)} bytes")
        return reply

    def _do_get_perms(self, session, tx_id, payload, args):
        path = self.canonical(session, self._args(args, 1, "XS_GET_PERMS")[0])
        tree, _ = self._tree_for(session, tx_id)
        return join_strings(*map(str, self._get(tree, session, path, "r").perms))

    def _logged(self, tx, msg_type, payload):
        if tx is not None:
            tx.log.append((msg_type, payload))
        return join_strings("OK")

    def _do_write(self, session, tx_id, payload, args):
        raw_path, sep, value = payload.partition(b"\0")
        if not sep:
            raise XenstoreError("EINVAL", "XS_WRITE needs path\\0value")
        try:
            path = self.canonical(session, raw_path.decode())
        except UnicodeDecodeError:
            raise XenstoreError("EINVAL", "XS_WRITE path is not UTF-8") from None
        tree, tx = self._tree_for(session, tx_id)
        node = tree.lookup(path)
        if node is None:
            self._create(tree, session, path, value)
        else:
            self._get(tree, session, path, "w")
            node.value = value
            self._changed(tree, path, node)
        return self._logged(tx, XsType.XS_WRITE, payload)

    def _do_mkdir(self, session, tx_id, payload, args):
        path = self.canonical(session, self._args(args, 1, "XS_MKDIR")[0])
        tree, tx = self._tree_for(session, tx_id)
        if tree.lookup(path) is None:
            self._create(tree, session, path, b"")
        return self._logged(tx, XsType.XS_MKDIR, payload)

    def _do_rm(self, session, tx_id, payload, args):
        path = self.canonical(session, self._args(args, 1, "XS_RM")[0])
        if path == "/":
            raise XenstoreError("EINVAL", "cannot remove /")
        tree, tx = self._tree_for(session, tx_id)
        if tree.lookup(path) is None:
            if tree.lookup(_parent(path)) is None:
                raise XenstoreError("ENOENT", f"no node {path} nor its parent")
            return self._logged(tx, XsType.XS_RM, payload)
        self._get(tree, session, path, "w")
        self._remove(tree, path)
        return self._logged(tx, XsType.XS_RM, payload)

    def _do_set_perms(self, session, tx_id, payload, args):
        args = self._args(args, 2, "XS_SET_PERMS")
        path = self.canonical(session, args[0])
        perms = tuple(Perm.parse(a) for a in args[1:])
        tree, tx = self._tree_for(session, tx_id)
        node = self._get(tree, session, path, "w")
        if session.domid != 0 and perms[0].domid != node.perms[0].domid:
            raise XenstoreError("EPERM", f"domain {session.domid} may not give {path} "
                                         f"to domain {perms[0].domid}")
        node.perms = perms
        self._changed(tree, path, node)
        return self._logged(tx, XsType.XS_SET_PERMS, payload)

    def _do_watch(self, session, tx_id, payload, args):
        path, token = self._args(args, 2, "XS_WATCH")[:2]
        abs_path = self.canonical(session, path, watch=True)
        mine = [w for w in self.watches if w.session is session]
        if any(w.path == path and w.token == token for w in mine):
            raise XenstoreError("EEXIST", f"watch {path} token {token!r} already set")
        if session.domid != 0 and len(mine) >= MAX_WATCHES_PER_DOMAIN:
            raise XenstoreError("E2BIG", f"domain {session.domid} has {len(mine)} watches")
        watch = _Watch(session, path, abs_path, token)
        self.watches.append(watch)
        self._queue_event(watch, abs_path)       # the initial event every new watch gets
        return join_strings("OK")

    def _do_unwatch(self, session, tx_id, payload, args):
        path, token = self._args(args, 2, "XS_UNWATCH")[:2]
        for watch in self.watches:
            if watch.session is session and watch.path == path and watch.token == token:
                self.watches.remove(watch)
                return join_strings("OK")
        raise XenstoreError("ENOENT", f"no watch {path} token {token!r}")

    def _do_reset_watches(self, session, tx_id, payload, args):
        self.watches = [w for w in self.watches if w.session is not session]
        return join_strings("OK")

    def _do_transaction_start(self, session, tx_id, payload, args):
        if tx_id != 0:
            raise XenstoreError("EBUSY", f"XS_TRANSACTION_START inside transaction {tx_id}")
        if session.domid != 0 and len(session.transactions) >= MAX_TRANSACTIONS_PER_DOMAIN:
            raise XenstoreError("ENOSPC", f"domain {session.domid} has "
                                          f"{len(session.transactions)} open transactions")
        tx = _Transaction(next(self._tx_ids), session, self.tree.copy())
        session.transactions[tx.id] = tx
        return join_strings(str(tx.id))

    def _do_transaction_end(self, session, tx_id, payload, args):
        verdict = self._args(args, 1, "XS_TRANSACTION_END")[0]
        if verdict not in ("T", "F"):
            raise XenstoreError("EINVAL", f"XS_TRANSACTION_END {verdict!r} is not T or F")
        _, tx = self._tree_for(session, tx_id)
        del session.transactions[tx_id]
        if verdict == "T":
            for path, gen in tx.tree.accessed.items():
                node = self.tree.nodes.get(path)
                if (node.gen if node else None) != gen:
                    raise XenstoreError("EAGAIN", f"transaction {tx_id}: {path} changed meanwhile")
            for msg_type, change in tx.log:
                _HANDLERS[msg_type](self, session, 0, change,
                                    [s.decode() for s in split_strings(change)]
                                    if msg_type != XsType.XS_WRITE else None)
        return join_strings("OK")

    def _do_get_domain_path(self, session, tx_id, payload, args):
        domid = self._domid_arg(args, "XS_GET_DOMAIN_PATH")
        return join_strings(domain_path(domid))

    def _domid_arg(self, args, what):
        text = self._args(args, 1, what)[0]
        if not text.isdigit() or int(text) > 0x7FF0:
            raise XenstoreError("EINVAL", f"{what}: {text!r} is not a domain id")
        return int(text)

    def _privileged(self, session, what):
        if session.domid != 0:
            raise XenstoreError("EACCES", f"{what} from domain {session.domid}")

    def _do_introduce(self, session, tx_id, payload, args):
        self._privileged(session, "XS_INTRODUCE")
        args = self._args(args, 3, "XS_INTRODUCE")
        domid = self._domid_arg(args, "XS_INTRODUCE")
        if not (args[1].isdigit() and args[2].isdigit()):
            raise XenstoreError("EINVAL", f"XS_INTRODUCE mfn {args[1]!r} port {args[2]!r}")
        if self._introduce_hook is None:
            raise XenstoreError("ENOSYS", "XS_INTRODUCE: this store maps no guest pages")
        shared, notify = self._introduce_hook(domid, int(args[1]), int(args[2]))
        self.introduce(domid, shared, notify)
        return join_strings("OK")

    def _do_release(self, session, tx_id, payload, args):
        self._privileged(session, "XS_RELEASE")
        self.release(self._domid_arg(args, "XS_RELEASE"))
        return join_strings("OK")

    def _do_is_domain_introduced(self, session, tx_id, payload, args):
        domid = self._domid_arg(args, "XS_IS_DOMAIN_INTRODUCED")
        return join_strings("T" if domid == 0 or domid in self.connections else "F")

    # --- the VMM's API for domains --------------------------------------------------

    def introduce(self, domid, shared, notify):
        """Connect guest ``domid`` whose xenstore ring page is ``shared``.

        ``notify()`` signals the guest (its xenstore event channel). The domain's
        home ``/local/domain/<domid>`` is created (owned by dom0, readable by the
        guest) if it does not exist yet. Returns the ``XsConnection``.
        """
        if domid == 0 or domid in self.connections:
            raise XenstoreError("EEXIST", f"domain {domid} is already connected")
        home = domain_path(domid)
        if self.tree.lookup(home) is None:
            self._create(self.tree, None, home, b"")
            self.tree.nodes[home].perms = (Perm(0, "n"), Perm(domid, "r"))
        conn = XsConnection(self, domid, shared, notify)
        self.connections[domid] = conn
        self._fire(INTRODUCE_DOMAIN, None)
        self._deliver()
        return conn

    def release(self, domid):
        """Disconnect ``domid``: drop its watches and transactions, fire @releaseDomain."""
        conn = self.connections.pop(domid, None)
        if conn is None:
            raise XenstoreError("ENOENT", f"domain {domid} is not connected")
        conn.drop_state()
        self._fire(RELEASE_DOMAIN, None)
        self._deliver()


_HANDLERS = {
    XsType.XS_READ: Xenstore._do_read,
    XsType.XS_DIRECTORY: Xenstore._do_directory,
    XsType.XS_GET_PERMS: Xenstore._do_get_perms,
    XsType.XS_WRITE: Xenstore._do_write,
    XsType.XS_MKDIR: Xenstore._do_mkdir,
    XsType.XS_RM: Xenstore._do_rm,
    XsType.XS_SET_PERMS: Xenstore._do_set_perms,
    XsType.XS_WATCH: Xenstore._do_watch,
    XsType.XS_UNWATCH: Xenstore._do_unwatch,
    XsType.XS_RESET_WATCHES: Xenstore._do_reset_watches,
    XsType.XS_TRANSACTION_START: Xenstore._do_transaction_start,
    XsType.XS_TRANSACTION_END: Xenstore._do_transaction_end,
    XsType.XS_GET_DOMAIN_PATH: Xenstore._do_get_domain_path,
    XsType.XS_INTRODUCE: Xenstore._do_introduce,
    XsType.XS_RELEASE: Xenstore._do_release,
    XsType.XS_IS_DOMAIN_INTRODUCED: Xenstore._do_is_domain_introduced,
}


class XsConnection(_Session):
    """The server side of one guest's xenstore ring page.

    ``handle()`` runs when the guest signals its event channel: it takes request
    bytes (possibly partial messages), answers every complete request, and writes
    replies and watch events as space allows, calling ``notify()`` when it moved
    anything. ``broken`` holds the reason once the guest broke the protocol.
    """

    def __init__(self, store, domid, shared, notify):
        super().__init__(store, domid)
        self.page = XsRingPage(shared)
        self.page.set("server_features", self.page.get("server_features") | SERVER_FEATURES)
        self.notify = notify
        self.broken = None
        self._serving = False
        self._in = bytearray()
        self._out = bytearray()

    def drop_state(self):
        self.transactions.clear()
        self.store.watches = [w for w in self.store.watches if w.session is not self]
        self._in.clear()
        self._out.clear()

    # --- save / restore (docs/migration-stream.md, "PV guests": xenstore_connection) ---

    def save(self):
        """The connection as plain values: its watches ([path, absolute path, token]),
        the bytes of a request not yet whole, replies the ring had no room for, and why
        it broke (or None). Transactions are not carried (each holds a copy of the
        tree): MigrationError while one is open."""
        if self.transactions:
            raise MigrationError(f"domain {self.domid} has {len(self.transactions)} open xenstore "
                                 f"transaction(s); save again when they have ended")
        watches = [[w.path, w.abs_path, w.token] for w in self.store.watches if w.session is self]
        return {"watches": watches, "input": bytes(self._in), "output": bytes(self._out),
                "broken": self.broken}

    def check_state(self, state, component="xenstore connection"):
        """``state`` (from save) checked in full; MigrationStreamError names the bad
        field. Changes nothing."""
        f = StateFields(state, component)
        watches = f.items("watches", MAX_WATCHES_PER_DOMAIN)
        for w in watches:
            if not (isinstance(w, list) and len(w) == 3 and all(isinstance(v, str) and len(v) <= 4096 for v in w)
                    and w[1].startswith("/")):
                f.fail("watches", f"{w!r} is not [path, absolute path, token]")
        f.blob("input", max_size=XENSTORE_PAYLOAD_MAX + HEADER_SIZE)
        f.blob("output", max_size=MAX_QUEUED_OUTPUT)
        if f.raw("broken") is not None:
            f.text("broken")
        f.done()

    def restore(self, state):
        """Replace this connection's watches, partial input, queued output and broken
        state with ``state`` (checked first: a refused state changes nothing)."""
        self.check_state(state)
        self.drop_state()
        self.store.watches.extend(_Watch(self, path, abs_path, token) for path, abs_path, token in state["watches"])
        self._in += state["input"]
        self._out += state["output"]
        self.broken = state["broken"]

    def deliver(self, path, token):
        self._send(encode_message(XsType.XS_WATCH_EVENT, 0, 0, join_strings(path, token)))
        if not self._serving:
            self.notify()

    def _send(self, message):
        if self.broken:
            return
        if len(self._out) + len(message) > MAX_QUEUED_OUTPUT:
            self._break(XENSTORE_ERROR_PROTO, f"domain {self.domid} left more than "
                                              f"{MAX_QUEUED_OUTPUT} reply bytes unread")
            return
        self._out += message
        self._flush()

    def _break(self, code, why):
        self.broken = why
        self.drop_state()
        self.page.set("error", code)
        self.notify()

    def _flush(self):
        if not self._out or self.broken:
            return False
        try:
            written = self.page.server_write(self._out)
        except RingError as err:
            self._break(XENSTORE_ERROR_RINGIDX, str(err))
            return False
        del self._out[:written]
        return written > 0

    def handle(self):
        """Serve the ring once; returns the number of requests answered."""
        if self.broken:
            return 0
        if self.page.get("connection") == XENSTORE_RECONNECT:
            self.drop_state()
            self.page.reset()
            self.notify()
            return 0
        self._serving = True
        try:
            answered, moved = self._serve()
        finally:
            self._serving = False
        if moved and not self.broken:
            self.notify()
        return answered

    def _serve(self):
        answered = 0
        moved = False
        while not self.broken:
            moved |= self._flush()
            if self._out:              # the guest must read replies before asking more
                break
            try:
                data = self.page.server_read()
            except RingError as err:
                self._break(XENSTORE_ERROR_RINGIDX, str(err))
                break
            self._in += data
            moved |= bool(data)
            try:
                message = self._take_message()
            except RingError as err:
                self._break(XENSTORE_ERROR_PROTO, str(err))
                break
            if message is None:
                if data:
                    continue
                break
            msg_type, req_id, tx_id, payload = message
            reply_type, reply = self.store.dispatch(self, msg_type, tx_id, payload)
            answered += 1
            self._send(encode_message(reply_type, req_id, tx_id, reply))
        return answered, moved

    def _take_message(self):
        if len(self._in) < HEADER_SIZE:
            return None
        msg_type, req_id, tx_id, length = decode_header(self._in)
        if len(self._in) < HEADER_SIZE + length:
            return None
        payload = bytes(self._in[HEADER_SIZE:HEADER_SIZE + length])
        del self._in[:HEADER_SIZE + length]
        return msg_type, req_id, tx_id, payload


class _Client:
    """The client API shared by dom0's ``LocalClient`` and a guest's ``RingClient``.

    Methods raise XenstoreError with the errno name the store replied. ``tx`` is a
    transaction id from ``transaction_start`` (0: none). Watch callbacks are called
    as ``callback(path, token)``.
    """

    def __init__(self):
        self._callbacks = {}
        self._tokens = itertools.count(1)

    def _call(self, msg_type, tx, payload):
        raise NotImplementedError

    def _request(self, msg_type, *strings, tx=0, raw=None):
        payload = raw if raw is not None else join_strings(*strings)
        reply_type, reply = self._call(msg_type, tx, payload)
        if reply_type == XsType.XS_ERROR:
            name = split_strings(reply)[0].decode(errors="replace") if reply else "EIO"
            raise XenstoreError(name, f"{XsType(msg_type).name} {' '.join(map(str, strings))}")
        return reply

    def read(self, path, tx=0):
        return self._request(XsType.XS_READ, path, tx=tx)

    def write(self, path, value, tx=0):
        value = value.encode() if isinstance(value, str) else bytes(value)
        self._request(XsType.XS_WRITE, path, tx=tx, raw=path.encode() + b"\0" + value)

    def mkdir(self, path, tx=0):
        self._request(XsType.XS_MKDIR, path, tx=tx)

    def rm(self, path, tx=0):
        self._request(XsType.XS_RM, path, tx=tx)

    def directory(self, path, tx=0):
        return [s.decode() for s in split_strings(self._request(XsType.XS_DIRECTORY, path, tx=tx))]

    def get_perms(self, path, tx=0):
        return [Perm.parse(s.decode())
                for s in split_strings(self._request(XsType.XS_GET_PERMS, path, tx=tx))]

    def set_perms(self, path, perms, tx=0):
        self._request(XsType.XS_SET_PERMS, path, *map(str, perms), tx=tx)

    def get_domain_path(self, domid):
        return split_strings(self._request(XsType.XS_GET_DOMAIN_PATH, str(domid)))[0].decode()

    def transaction_start(self):
        return int(split_strings(self._request(XsType.XS_TRANSACTION_START, ""))[0])

    def transaction_end(self, tx, commit=True):
        self._request(XsType.XS_TRANSACTION_END, "T" if commit else "F", tx=tx)

    def watch(self, path, callback, token=None):
        """Watch ``path``; ``callback(path, token)`` runs for the initial event and each change."""
        token = token or f"pyvmm-{next(self._tokens)}"
        self._callbacks[token] = callback
        try:
            self._request(XsType.XS_WATCH, path, token)
        except XenstoreError:
            del self._callbacks[token]
            raise
        return token

    def unwatch(self, path, token):
        self._request(XsType.XS_UNWATCH, path, token)
        self._callbacks.pop(token, None)

    def _event(self, path, token):
        callback = self._callbacks.get(token)
        if callback is not None:
            callback(path, token)


class LocalClient(_Client, _Session):
    """A Python client inside the VMM (dom0 backends, the toolstack): no ring in between."""

    def __init__(self, store, domid=0):
        _Client.__init__(self)
        _Session.__init__(self, store, domid)

    def _call(self, msg_type, tx, payload):
        return self.store.dispatch(self, msg_type, tx, payload)

    def deliver(self, path, token):
        self._event(path, token)


class RingClient(_Client):
    """The guest side of a xenstore ring page, as a guest kernel's xenbus driver uses it.

    ``kick()`` signals the server (the guest's event channel send). A request writes
    its message, kicks, and reads until its reply arrives; watch events that arrive
    meanwhile are queued and run after the reply (or on ``poll()``, the guest's
    event-channel handler).
    """

    def __init__(self, shared, kick):
        super().__init__()
        self.page = XsRingPage(shared)
        self.kick = kick
        self._req_ids = itertools.count(1)
        self._in = bytearray()
        self._events = deque()
        self._busy = False
        self._dispatching = False

    def _call(self, msg_type, tx, payload):
        req_id = next(self._req_ids) & 0xFFFFFFFF
        message = encode_message(msg_type, req_id, tx, payload)
        self._busy = True
        try:
            sent = 0
            reply = None
            for _ in range(len(message) // 64 + 64):      # bounded: the server must progress
                if sent < len(message):
                    sent += self.page.client_write(message[sent:])
                self.kick()
                reply = self._read_until(req_id)
                if reply is not None:
                    break
            if reply is None:
                raise XenstoreError("EIO", f"no reply to request {req_id} type {int(msg_type)}")
        finally:
            self._busy = False
        self.poll()
        return reply

    def _read_until(self, req_id):
        self._in += self.page.client_read()
        while len(self._in) >= HEADER_SIZE:
            msg_type, got_id, _, length = decode_header(self._in)
            if len(self._in) < HEADER_SIZE + length:
                break
            payload = bytes(self._in[HEADER_SIZE:HEADER_SIZE + length])
            del self._in[:HEADER_SIZE + length]
            if msg_type == XsType.XS_WATCH_EVENT:
                parts = [s.decode() for s in split_strings(payload)]
                if len(parts) >= 2:
                    self._events.append((parts[0], parts[1]))
            elif got_id == req_id:
                return msg_type, payload
        return None

    def poll(self):
        """Take what the server wrote and run queued watch callbacks, one at a time.

        Like a guest's xenwatch thread: never inside a request, and never inside
        another callback (events it causes run after it returns).
        """
        if self._busy or self._dispatching:
            return
        self._dispatching = True
        try:
            self._read_until(None)
            while self._events:
                self._event(*self._events.popleft())
                self._read_until(None)
        finally:
            self._dispatching = False
