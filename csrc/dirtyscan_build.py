"""cffi builder for pyvmm._dirtyscan, the C dirty-page scan (csrc/dirtyscan.c).

The declarations are taken from dirtyscan.h itself through csrc/cffi_header.py
(cffi's cdef cannot #include), so they are written once.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cffi_header import compile_here, module_builder  # noqa: E402

ffibuilder = module_builder(HERE, "dirtyscan", "DS_", opt="-O3")

if __name__ == "__main__":
    compile_here(ffibuilder, HERE)
