"""cffi builder for pyvmm._unlz4, the LZ4 legacy-frame decoder (csrc/unlz4.c)."""
import os
import sys

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cffi_header import compile_here, header_cdef  # noqa: E402

ffibuilder = FFI()
ffibuilder.cdef(header_cdef(os.path.join(HERE, "unlz4.h"), "UNLZ4_"))
with open(os.path.join(HERE, "unlz4.c")) as f:
    ffibuilder.set_source("pyvmm._unlz4", f.read(), include_dirs=[HERE], extra_compile_args=["-O2"])

if __name__ == "__main__":
    compile_here(ffibuilder, HERE)
