"""The qcow2 image format (QEMU docs/interop/qcow2.rst), versions 2 and 3."""
