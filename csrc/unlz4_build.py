"""cffi builder for pyvmm._unlz4, the LZ4 legacy-frame decoder (csrc/unlz4.c).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from cffi_header import compile_here, module_builder  # noqa: E402

ffibuilder = module_builder(HERE, "unlz4", "UNLZ4_")

if __name__ == "__main__":
    compile_here(ffibuilder, HERE)
