#!/usr/bin/env python3
"""Fetch Debian's cloud kernel (a bzImage) into a cache and print its path.

    python3 scripts/fetch_kernel.py [--dest DIR] [--package NAME] [--refresh]

The metapackage linux-image-cloud-amd64 depends on a versioned
linux-image-<ABI>-cloud-amd64 whose ABI number changes with kernel updates, so the real
package is resolved at run time from the apt lists (apt-cache show), downloaded with
`apt-get download` into DIR/debs, and its boot/vmlinuz-* is extracted (streamed out of
`dpkg-deb --fsys-tarfile`) to DIR/vmlinuz-<release>. DIR is --dest, else
$PYVMM_LINUX_CACHE, else ~/.cache/pyvmm/linux.

Idempotent: DIR/kernel.json records what was fetched; while that file and the kernel are
there, the path is printed without asking apt anything (--refresh re-resolves and
downloads a newer kernel if the apt lists have one). Run `apt-get update` once first.

stdout: the kernel's path, alone. stderr: the package, and the boot protocol version read
from the bzImage header. Exit status 2 with one line on stderr if apt is missing, a
download fails, or the file is not a bzImage.
"""

from __future__ import annotations

import argparse
import re
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import debpkg  # noqa: E402
from debpkg import FetchError  # noqa: E402

PROG = "fetch_kernel"
DEFAULT_PACKAGE = "linux-image-cloud-amd64"
STAMP = "kernel.json"
VERSIONED = re.compile(r"^linux-image-\d[\w.+\-]*$")


def bzimage_protocol(path: Path) -> tuple[int, int]:
    """(major, minor) boot protocol of a bzImage; FetchError if it is not one.

    The real-mode setup header lives at 0x1f1: boot_flag 0xAA55 at 0x1fe, the "HdrS"
    magic at 0x202 and the 16-bit protocol version at 0x206 (Documentation/arch/x86/boot.rst).
    """
    try:
        with open(path, "rb") as f:
            head = f.read(0x208)
    except OSError as e:
        raise FetchError(f"{path}: {e.strerror}") from None
    if len(head) < 0x208:
        raise FetchError(f"{path}: not a bzImage: only {len(head)} bytes")
    if head[0x202:0x206] != b"HdrS":
        raise FetchError(f"{path}: not a bzImage: no 'HdrS' magic at offset 0x202")
    if head[0x1FE:0x200] != b"\x55\xaa":
        raise FetchError(f"{path}: not a bzImage: no 0xAA55 boot flag at offset 0x1fe")
    (version,) = struct.unpack_from("<H", head, 0x206)
    return version >> 8, version & 0xFF


def resolve(package: str) -> tuple[str, str]:
    """(versioned kernel package, exact version) for a metapackage or a versioned name."""
    fields = debpkg.show(package)
    if VERSIONED.match(package):
        return package, fields["Version"]
    for alts in debpkg.parse_depends(fields.get("Depends", "")):
        for name, version in alts:
            if VERSIONED.match(name):
                return name, version or debpkg.show(name)["Version"]
    raise FetchError(f"{package} {fields['Version']}: no linux-image-<ABI>-* package "
                     f"in its Depends ({fields.get('Depends', 'none')})")


def cached(cache: Path) -> dict | None:
    return debpkg.read_stamp(cache / STAMP)


def fetch(cache: Path, package: str, refresh: bool = False) -> dict:
    """Return the stamp of the cached kernel, downloading it first if needed."""
    if not refresh:
        stamp = cached(cache)
        if stamp:
            return stamp
    debpkg.require_apt()
    name, version = resolve(package)
    stamp = cached(cache)
    if stamp and stamp.get("package") == name and stamp.get("version") == version:
        return stamp
    deb = debpkg.download(name, version, cache / "debs")
    member, path = debpkg.extract_member(
        deb, lambda n: n.startswith("boot/vmlinuz-") and "/" not in n[5:], cache)
    major, minor = bzimage_protocol(path)
    stamp = dict(package=name, version=version, deb=str(deb), member=member,
                 file=str(path), size=path.stat().st_size, protocol=f"{major}.{minor:02d}")
    debpkg.write_stamp(cache / STAMP, **stamp)
    return stamp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", help="cache directory (default $PYVMM_LINUX_CACHE or "
                                   "~/.cache/pyvmm/linux)")
    ap.add_argument("--package", default=DEFAULT_PACKAGE,
                    help=f"metapackage or versioned kernel package (default {DEFAULT_PACKAGE})")
    ap.add_argument("--refresh", action="store_true",
                    help="resolve the package again and fetch it if it changed")
    args = ap.parse_args(argv)
    try:
        cache = debpkg.cache_dir(args.dest)
        stamp = fetch(cache, args.package, args.refresh)
        path = Path(stamp["file"])
        major, minor = bzimage_protocol(path)  # verify the cached file too
    except FetchError as e:
        return debpkg.fail(PROG, e)
    print(f"{PROG}: {stamp['package']} {stamp['version']}: {path.name}: "
          f"bzImage, boot protocol {major}.{minor:02d}", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
