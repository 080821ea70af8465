#!/bin/bash
# run.sh GUEST.elf [COMMAND LINE] - run a pyvmm guest under QEMU (TCG) instead of pyvmm.
#
# QEMU is a reference machine: when a guest fails under pyvmm, running it here tells whether
# the guest or the VMM is wrong. Needs qemu-system-x86_64 (Debian: qemu-system-x86), as, ld.
# Prints the guest's serial output and QEMU's exit status: 0 after power-off, (code << 1) | 1
# after isa-debug-exit. See README.md for the checks QEMU itself fails.
# Environment: TIMEOUT (seconds, default 120), QEMU_CPU (default EPYC), QEMU_EXTRA.
set -e
here=$(cd "$(dirname "$0")" && pwd)
elf=$(readlink -f "$1")
shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
objcopy -O binary "$elf" guest.bin
class=$(readelf -h "$elf" | awk '/Class:/ {print $2}')
entry=$(readelf -h "$elf" | awk '/Entry point/ {print $4}')
memsz=$(readelf -lW "$elf" | awk '/LOAD/ {print $6}')
g64=0
[ "$class" = ELF64 ] && g64=1
as --32 --defsym GUEST64=$g64 --defsym GUEST_ENTRY=$entry --defsym GUEST_MEMSZ=$memsz \
    -o shim.o "$here/shim.S"
ld -m elf_i386 -Ttext=0x1000000 -e _shim --build-id=none -o shim.elf shim.o
set +e
timeout "${TIMEOUT:-120}" qemu-system-x86_64 -machine pc -accel tcg -cpu "${QEMU_CPU:-EPYC}" -m 64 \
    -display none -serial stdio -monitor none -no-reboot \
    -device isa-debug-exit,iobase=0x501,iosize=1 \
    -kernel shim.elf -append "${1:-console=ttyS0}" ${QEMU_EXTRA} 2> qemu.err
status=$?
grep -v "TCG doesn't support requested feature" qemu.err >&2
echo "[qemu exit status $status]"
exit $status
