"""cffi builder for pyvmm._dirtyscan, the C dirty-page scan (csrc/dirtyscan.c).

The declarations are taken from dirtyscan.h itself through csrc/cffi_header.py
(cffi's cdef cannot #include), so they are written once.
"""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cffi_header import compile_here, header_cdef  # noqa: E402

ffibuilder = FFI()
ffibuilder.cdef(header_cdef(os.path.join(HERE, "dirtyscan.h"), "DS_"))
with open(os.path.join(HERE, "dirtyscan.c")) as f:
    ffibuilder.set_source("pyvmm._dirtyscan", f.read(), include_dirs=[HERE],
                          extra_compile_args=["-O3"])

if __name__ == "__main__":
    compile_here(ffibuilder, HERE)
