"""Shared by the cffi builders in csrc/: a header's declarations as cffi's cdef wants them.

cffi's cdef cannot #include, so each builder hands it the module's own header: its
comments stripped, its #defines with PREFIX turned into "#define NAME ..." (cffi then
takes each constant's value from the compiled header), every other preprocessor
line dropped. The declarations are thus written once, in the header.
"""
import os
import re

from cffi import FFI


def header_cdef(path, prefix):
    text = open(path).read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    names = re.findall(r"^#define\s+(%s\w+)\s" % re.escape(prefix), text, flags=re.M)
    decls = re.sub(r"^#.*$", "", text, flags=re.M)
    return "".join("#define %s ...\n" % name for name in names) + decls


def compile_here(ffibuilder, here):
    """Build the module in place (python3 csrc/NAME_build.py), as setup.py would."""
    ffibuilder.compile(tmpdir=os.path.join(here, "..", "build", "cffi"), verbose=False)


def module_builder(here, stem, prefix, opt="-O2"):
    """The FFI that builds ``pyvmm._<stem>`` from ``<stem>.c``, declared by ``<stem>.h``
    (its ``prefix`` constants taken from the compiled header)."""
    ffibuilder = FFI()
    ffibuilder.cdef(header_cdef(os.path.join(here, stem + ".h"), prefix))
    with open(os.path.join(here, stem + ".c")) as f:
        ffibuilder.set_source("pyvmm._" + stem, f.read(), include_dirs=[here], extra_compile_args=[opt])
    return ffibuilder
