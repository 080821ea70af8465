"""pyvmm: an x86 paravirtual hypervisor emulator in Python around Unicorn."""

__version__ = "0.1.0"
