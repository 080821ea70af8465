"""Disk images behind one interface: ``DiskImage``, ``open_image``, ``create_image``.

Formats: raw (raw.py) and qcow2 versions 2 and 3 (qcow2/). Devices see only the
DiskImage methods; the format is probed from the file.
"""
from pyvmm.storage.image import DiskImage, create_image, open_image, probe

__all__ = ["DiskImage", "create_image", "open_image", "probe"]
