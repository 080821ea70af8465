"""cffi builder for pyvmm._dirtyscan, the C dirty-page scan (csrc/dirtyscan.c).

The declarations are taken from dirtyscan.h itself (cffi's cdef cannot #include),
so they are written once.
"""
import os
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))


def _header_cdef():
    """The header's declarations; its #defines become "#define NAME ..." so that cffi
    takes each constant's value from the compiled header."""
    text = open(os.path.join(HERE, "dirtyscan.h")).read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    names = re.findall(r"^#define\s+(DS_\w+)\s", text, flags=re.M)
    decls = re.sub(r"^#.*$", "", text, flags=re.M)
    return "".join("#define %s ...\n" % name for name in names) + decls


ffibuilder = FFI()
ffibuilder.cdef(_header_cdef())
with open(os.path.join(HERE, "dirtyscan.c")) as f:
    ffibuilder.set_source("pyvmm._dirtyscan", f.read(), include_dirs=[HERE],
                          extra_compile_args=["-O3"])

if __name__ == "__main__":
    ffibuilder.compile(tmpdir=os.path.join(HERE, "..", "build", "cffi"), verbose=False)
