"""Domain 0: the VMM's own domain, shared by every guest domain of one pyvmm process.

Responsibility: hold what all guests of a host share and what Xen's toolstack and
domain-0 daemons own: the DomainTable (domain 0 itself, a Python domain without RAM,
plus each guest domain as it is created), the xenstore daemon, and domain 0's own
xenstore client (the toolstack's view: it writes ``/local/domain/<domid>/...``).
``pv_platform.PvPlatform`` connects one guest domain to it; ``pv.hypervisor`` builds
one ``Dom0`` and hands it to every guest it starts.

Invariants:
- domain 0 has domid 0, is privileged and is always in the table; guest domids are
  unique and never 0 (DomainTable refuses a second domain with the same id);
- a guest's xenstore home directory carries its domid and name before the guest runs,
  and its ``data`` directory is writable by that guest only (libxl's layout);
- ``remove(domid)`` destroys that guest domain only (its event channels close, its
  grant mappings go, its xenstore connection is released): the others carry on.
"""

from pyvmm.errors import ConfigError
from pyvmm.pv.domain import Domain, DomainTable
from pyvmm.pv.xenstore import LocalClient, Perm, Xenstore, domain_path


class Dom0:
    """The domain table, domain 0 and xenstore of one host."""

    def __init__(self):
        self.domains = DomainTable()
        self.domain = self.domains.add(Domain(0, name="Domain-0", privileged=True))
        self.xenstore = Xenstore()
        self.xs = LocalClient(self.xenstore, 0)

    def add_guest(self, domain, store_page, notify):
        """Put guest ``domain`` in the table, connect its xenstore ring ``store_page``
        (``notify()`` signals the guest) and give it its xenstore home; returns the
        xenstore connection."""
        if domain.domid == 0:
            raise ConfigError(f"guest {domain.name!r}: domid 0 is domain 0 itself")
        self.domains.add(domain)
        conn = self.xenstore.introduce(domain.domid, store_page, notify)
        home = domain_path(domain.domid)
        self.xs.write(f"{home}/domid", str(domain.domid))
        self.xs.write(f"{home}/name", domain.name)
        self.xs.mkdir(f"{home}/data")                      # libxl's rw directory for the guest
        self.xs.set_perms(f"{home}/data", [Perm(domain.domid, "n")])
        return conn

    def remove(self, domid):
        """Destroy guest ``domid``: its channels close (the peers see them closed), its
        grant mappings are dropped, its xenstore connection is released."""
        if domid == 0:
            raise ConfigError("domain 0 cannot be removed: it is the VMM")
        self.domains.remove(domid)
        if domid in self.xenstore.connections:
            self.xenstore.release(domid)
