"""Virtual block devices of a PV guest: ``--disk`` specs, the toolstack's xenstore nodes, one blkback each.

Responsibility: what a toolstack (libxl) does to give a PV guest its disks, and
nothing of the blkif protocol itself (that is blkback.py):
- parse ``FILE[,format=raw|qcow2][,readonly]`` (``DiskSpec.parse``);
- open every image before anything else is built (``open_disks``: all or none);
- for disk *i*, create both xenbus directories (``device/vbd/<devid>`` owned by
  the guest, ``backend/vbd/<domid>/<devid>`` owned by domain 0) with libxl's keys,
  and start a ``Blkback`` in domain 0 that follows the frontend's ``state`` through
  a xenstore watch to Connected and back to Closed (``attach_vbds``);
- on detach (the VM closes): stop each backend (rings unmapped, event channel
  closed, watch removed) and close its image, which flushes it.

Device numbers follow Xen's vbd interface for PV disks ``xvdX``
(xen docs/misc/vbd-interface.txt: ``(202 << 8) | (disk << 4)``), so the first
disk is 51712 = xvda, as Linux's blkfront and libxl name it.

Invariants: a bad spec or an image that cannot be opened raises (ConfigError,
BadImageError) before any VM state exists, and leaves no image open; a read-only
spec opens the image read-only, so blkback refuses writes and discards and the
file is never written; detaching is idempotent and closes every image even if a
backend's teardown fails.

Save/restore (docs/migration-stream.md, "Disks"): ``Vbd.save`` serves the requests
on the ring first (none stays in flight), flushes the image and gives the DISK
record's state map (the image's path, format and read-only flag, the device id,
its size, blkback's connection). ``restore_vbds`` opens the images again by path
(shared storage: the same file) and builds each Vbd without starting its backend;
``Vbd.restore`` then takes the connection up where it was, once the guest's grant
table, event channels and xenstore home are back. For a live migration the source
``release``s its images after the save (closed: flushed, qcow2 marked clean, no
write after that) so the destination opens them as the only writer, and
``reclaim``s them if the migration fails and the VM runs on here.
"""

from dataclasses import dataclass
from typing import Optional

from pyvmm.devices.backend import close_all
from pyvmm.devices.block.blkback import SECTOR_SIZE, Blkback
from pyvmm.devices.xenbus import create_device
from pyvmm.errors import ConfigError, MigrationStreamError
from pyvmm.migrate.state import StateFields
from pyvmm.storage import open_image

__all__ = ["DiskSpec", "Vbd", "open_disks", "attach_vbds", "restore_vbds", "check_disk_state",
           "vbd_devid", "vbd_name", "MAX_DISKS"]

XVD_MAJOR = 202            # docs/misc/vbd-interface.txt: xvd disks, major 202, 16 minors each
MAX_DISKS = 16             # xvda..xvdp: the 16-bit encoding's simple form
FORMATS = ("raw", "qcow2")


def vbd_devid(index):
    """The xenstore device id of disk ``index`` (0 -> 51712, xvda)."""
    if not 0 <= index < MAX_DISKS:
        raise ConfigError(f"disk {index}: at most {MAX_DISKS} disks (xvda..xvdp)")
    return XVD_MAJOR << 8 | index << 4


def vbd_name(index):
    return "xvd" + chr(ord("a") + index)


@dataclass(frozen=True)
class DiskSpec:
    """One ``--disk``: the image file, its format (None: probe it) and read-only flag."""

    path: str
    format: Optional[str] = None
    readonly: bool = False

    @classmethod
    def parse(cls, text):
        """``FILE[,format=raw|qcow2][,readonly]`` (ConfigError naming the argument and the problem)."""
        if isinstance(text, DiskSpec):
            return text
        if not isinstance(text, str) or not text:
            raise ConfigError(f"--disk {text!r}: give FILE[,format=raw|qcow2][,readonly]")
        path, *options = text.split(",")
        if not path:
            raise ConfigError(f"--disk {text!r}: the file name is empty")
        fmt, readonly = None, False
        for opt in options:
            key, eq, value = opt.partition("=")
            if key == "readonly" and not eq:
                readonly = True
            elif key == "format" and eq:
                if value not in FORMATS:
                    raise ConfigError(f"--disk {text!r}: unknown format {value!r} (raw or qcow2)")
                fmt = value
            else:
                raise ConfigError(f"--disk {text!r}: unknown option {opt!r} "
                                  f"(known: format=raw|qcow2, readonly)")
        return cls(path, fmt, readonly)


def open_disks(specs):
    """The DiskImages of ``specs`` (strings or DiskSpecs), opened in order; all or none."""
    specs = [DiskSpec.parse(s) for s in specs]
    if len(specs) > MAX_DISKS:
        raise ConfigError(f"{len(specs)} disks given; at most {MAX_DISKS} (xvda..xvdp)")
    images = []
    try:
        for spec in specs:
            images.append(open_image(spec.path, spec.format, readonly=spec.readonly))
    except BaseException:
        for image in images:
            image.close()
        raise
    return images


def check_disk_state(state, where="snapshot"):
    """The DiskSpec of a DISK record's state map (Vbd.save()), its top-level fields
    checked (the backend's map is checked by Blkback.restore)."""
    f = StateFields(state, f"{where} disk")
    path = f.text("path")
    fmt = f.choice("format", FORMATS)
    readonly = f.flag("readonly")
    f.choice("devid", [vbd_devid(i) for i in range(MAX_DISKS)])
    f.uint("sectors", 1 << 64)
    if not isinstance(f.raw("backend"), dict):
        f.fail("backend", "not a map")
    f.done()
    return DiskSpec(path, fmt, readonly)


class Vbd:
    """Disk ``index`` of guest ``frontend_domid``: its xenstore directories and its Blkback.

    ``backend_domain`` is domain 0 (maps grants, owns the event channel), ``client``
    its xenstore client. The directories are made and the backend started (InitWait)
    at once; the guest's blkfront does the rest of the handshake. ``start=False``
    (a restore) leaves the backend unstarted for ``restore``.
    """

    def __init__(self, backend_domain, client, frontend_domid, index, image, start=True):
        self.index = index
        self.devid = vbd_devid(index)
        self.name = vbd_name(index)
        self.image = image
        # libxl's keys (libxl_disk.c): what the disk is, for the backend and tools.
        backend_values = {"params": image.path, "type": image.format or "raw",
                          "mode": "r" if image.readonly else "w", "device-type": "disk",
                          "removable": 0, "bootable": 1 if index == 0 else 0, "dev": self.name}
        self.frontend_path, self.backend_path = create_device(
            client, "vbd", frontend_domid, self.devid, backend_domain.domid, backend_values)
        client.write(f"{self.frontend_path}/virtual-device", str(self.devid))
        client.write(f"{self.frontend_path}/device-type", "disk")
        self.blkback = Blkback(backend_domain, client, frontend_domid, self.devid, image)
        if start:
            self.blkback.start()

    @property
    def state(self):
        """The backend's xenbus state."""
        return self.blkback.xenbus.state

    # --- save / restore -----------------------------------------------------------------

    def save(self):
        """The DISK record's state map. Serves the requests already on the ring (their
        responses go into the guest's ring page) and flushes the image first."""
        backend = self.blkback.save()
        self.image.flush()
        return {"path": self.image.path, "format": self.image.format or "raw",
                "readonly": bool(self.image.readonly), "devid": self.devid,
                "sectors": self.blkback.sectors, "backend": backend}

    def restore(self, state, where="snapshot"):
        """Take up the saved attachment in this Vbd, built by restore_vbds from the same
        state (so path, format and read-only flag match); the image must have the saved
        size and the device id must be this one (MigrationStreamError otherwise)."""
        check_disk_state(state, where)
        if state["devid"] != self.devid:
            raise MigrationStreamError(f"{where}: disk {self.name} was saved as device {state['devid']}, "
                                       f"restored as {self.devid}")
        if state["sectors"] != self.blkback.sectors:
            raise MigrationStreamError(f"{where}: disk {self.image.path} has {self.blkback.sectors} sectors "
                                       f"of {SECTOR_SIZE} bytes, but {state['sectors']} when it was saved")
        self.blkback.restore(state["backend"])

    def release(self):
        """Hand the image over (a live migration's destination opens it next): closed,
        so flushed and (qcow2) marked clean, and nothing more is written to it here."""
        self.image.close()

    def reclaim(self):
        """Open the image again after ``release`` (the migration failed: the VM runs on)."""
        if self.image.closed:
            image = open_image(self.image.path, self.image.format, readonly=self.image.readonly)
            self.image = self.blkback.image = image

    def close(self):
        """Stop the backend and close (flush) the image; idempotent."""
        try:
            if self.blkback is not None:
                self.blkback.stop()
        finally:
            self.blkback = None
            self.image.close()


def attach_vbds(pv, images, start=True):
    """A Vbd per image for ``pv``'s guest (a PvPlatform: ``dom0``, ``xs``, ``guest``),
    devices xvda, xvdb ... in order (``start`` as Vbd's). On failure every image is closed."""
    vbds = []
    try:
        for index, image in enumerate(images):
            vbds.append(Vbd(pv.dom0, pv.xs, pv.guest.domid, index, image, start=start))
    except BaseException:
        close_all(vbds)
        for image in images[len(vbds):]:
            image.close()
        raise
    return vbds


def restore_vbds(pv, states, where="snapshot"):
    """Unstarted Vbds for the DISK state maps ``states`` (Vbd.save(), in device order):
    the images opened again by path, format and read-only flag, all or none. Each is
    then brought back with ``Vbd.restore(state)`` once the guest's domain is restored."""
    specs = [check_disk_state(state, where) for state in states]
    return attach_vbds(pv, open_disks(specs), start=False)
