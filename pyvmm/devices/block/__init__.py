"""Block device backends: ``Blkback`` serves the blkif protocol (io/blkif.h) from domain 0."""

from pyvmm.devices.block.blkback import Blkback

__all__ = ["Blkback"]
