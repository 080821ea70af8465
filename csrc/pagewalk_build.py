"""cffi builder for pyvmm._pagewalk, the C guest page walk (csrc/pagewalk.c).

The declarations are taken from pagewalk.h itself through csrc/cffi_header.py
(cffi's cdef cannot #include), so they are written once.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cffi_header import compile_here, module_builder  # noqa: E402

ffibuilder = module_builder(HERE, "pagewalk", "PW_")

if __name__ == "__main__":
    compile_here(ffibuilder, HERE)
