"""Booting kernels: loading ELF and bzImage kernels, the zero page, and the entry state.

``load_kernel`` (in ``loader``) is the entry point; see docs/platform.md for the
contract it implements.
"""

from pyvmm.boot.loader import BootInfo, EntryState, LoadedKernel, load_kernel

__all__ = ["BootInfo", "EntryState", "LoadedKernel", "load_kernel"]
