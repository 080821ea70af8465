"""CPUID policy: what the guest is told about its CPU.

Starts from what the emulated model answers (QEMU's EPYC, via the engine) and
changes what pyvmm must hide or add (docs/platform.md, "CPUID"): the hypervisor
bit, no APIC (pyvmm has none), no SVM (no nesting), and the hypervisor leaves
0x40000000/0x40000001 with pyvmm's signature, as KVM ("KVMKVMKVM") and Xen
("XenVMMXenVMM") publish theirs.
"""

import struct

from pyvmm import __version__

SIGNATURE = b"PyVMMPyVMMPy"
HYPERVISOR_BASE = 0x40000000
LEAF1_ECX_HYPERVISOR = 1 << 31
LEAF1_EDX_APIC = 1 << 9
EXT1_ECX_SVM = 1 << 2
# Leaves whose answer depends on ECX (SDM Vol. 2A, CPUID; APM Vol. 3, E.3).
SUBLEAF_LEAVES = frozenset({0x4, 0x7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x8000001D})


def version_word():
    major, minor = (int(x) for x in __version__.split(".")[:2])
    return (major << 16) | minor


class CpuidPolicy:
    """Answers CPUID queries; ``native(leaf, subleaf)`` gives the model's answer."""

    def __init__(self, native, leaves=()):
        """native(leaf, subleaf) -> (eax, ebx, ecx, edx) of the CPU model; leaves: the
        (leaf, subleaf or None) keys it answers, for ``table``."""
        self._native = native
        self._leaves = list(leaves)
        self._cache = {}
        sig = struct.unpack("<3I", SIGNATURE)
        self.overrides = {
            (HYPERVISOR_BASE, 0): (HYPERVISOR_BASE + 1, sig[0], sig[1], sig[2]),
            (HYPERVISOR_BASE + 1, 0): (version_word(), 0, 0, 0),
        }

    def query(self, leaf, subleaf=0):
        vals = self._cache.get((leaf, subleaf))
        if vals is None:
            key = (leaf, subleaf if leaf in SUBLEAF_LEAVES else 0)
            vals = self._cache[(leaf, subleaf)] = self._cache.get(key) or self._compute(*key)
        return vals

    def table(self):
        """What the guest is told for every leaf the model has and the hypervisor
        leaves, for the engine's in-VMM CPUID table: (leaf, subleaf or None when the
        leaf ignores ECX, eax, ebx, ecx, edx)."""
        keys = self._leaves + [(HYPERVISOR_BASE, None), (HYPERVISOR_BASE + 1, None)]
        return [(leaf, sub) + self.query(leaf, sub or 0) for leaf, sub in keys]

    def _compute(self, leaf, subleaf):
        if key_override := self.overrides.get((leaf, subleaf)):
            return key_override
        if HYPERVISOR_BASE <= leaf < HYPERVISOR_BASE + 0x100:
            return (0, 0, 0, 0)
        a, b, c, d = self._native(leaf, subleaf)
        if leaf == 1:
            c |= LEAF1_ECX_HYPERVISOR
            d &= ~LEAF1_EDX_APIC
        elif leaf == 0x80000001:
            c &= ~EXT1_ECX_SVM
        return (a, b, c, d)
