"""Helpers shared by fetch_kernel.py and mkinitramfs.py: the cache directory, and getting
one file out of a Debian package with apt-cache, apt-get download and dpkg-deb.

Nothing here runs as a side effect of importing it; the tests import it without network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DEFAULT_CACHE = "~/.cache/pyvmm/linux"
CACHE_ENV = "PYVMM_LINUX_CACHE"
APT_TOOLS = ("apt-get", "apt-cache", "dpkg-deb")


class FetchError(Exception):
    """A failure to report as one line, with exit status 2."""


def cache_dir(dest: str | None = None) -> Path:
    """``dest`` if given, else $PYVMM_LINUX_CACHE, else ~/.cache/pyvmm/linux (created)."""
    d = Path(os.path.expanduser(dest or os.environ.get(CACHE_ENV) or DEFAULT_CACHE))
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FetchError(f"cannot create cache directory {d}: {e.strerror}") from None
    return d.resolve()


def require_apt() -> None:
    missing = [t for t in APT_TOOLS if shutil.which(t) is None]
    if missing:
        raise FetchError(f"{', '.join(missing)} not found: this script needs Debian's apt "
                         "and dpkg (run it on Debian or Ubuntu)")


def _last_line(text: str) -> str:
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    # apt prints "E: ..." lines for errors; prefer the first of those.
    errors = [l for l in lines if l.startswith("E:")]
    return (errors or lines or ["(no output)"])[0]


def run(cmd: list[str], what: str, cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except OSError as e:
        raise FetchError(f"{what}: cannot run {cmd[0]}: {e.strerror}") from None
    if p.returncode != 0:
        raise FetchError(f"{what} failed: {_last_line(p.stderr + p.stdout)}")
    return p.stdout


# -- package metadata --------------------------------------------------------------
def parse_control(text: str) -> dict[str, str]:
    """Parse the first stanza of Debian control text (apt-cache show, dpkg-deb -f)."""
    fields: dict[str, str] = {}
    key = None
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        if line[0] in " \t" and key:
            fields[key] += "\n" + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip()
            fields[key] = value.strip()
    return fields


def parse_depends(value: str) -> list[list[tuple[str, str | None]]]:
    """Split a Depends value into alternatives of (package, version-or-None).

    The version is kept only for an exact "(= V)" relation.
    ``"a (= 1), b | c (>= 2)"`` -> ``[[("a", "1")], [("b", None), ("c", None)]]``
    """
    out = []
    for clause in value.split(","):
        alts = []
        for alt in clause.split("|"):
            m = re.match(r"\s*([a-z0-9][a-z0-9+.\-]*)(?::\S+)?\s*(?:\(\s*([<>=]+)\s*([^)\s]+)\s*\))?",
                         alt)
            if m and m.group(1):
                alts.append((m.group(1), m.group(3) if m.group(2) == "=" else None))
        if alts:
            out.append(alts)
    return out


def show(package: str) -> dict[str, str]:
    """apt-cache show for the candidate version of ``package``."""
    missing = FetchError(f"no package {package} in the apt lists "
                         "(check the name, or run 'apt-get update' first)")
    try:
        out = run(["apt-cache", "show", "--no-all-versions", package],
                  f"apt-cache show {package}")
    except FetchError as e:
        if "No packages found" in str(e):
            raise missing from None
        raise
    fields = parse_control(out)
    if "Version" not in fields:
        raise missing
    return fields


# -- download and extraction ---------------------------------------------------------
def deb_filename(package: str, version: str, arch: str = "*") -> str:
    """The name apt-get download gives a .deb (':' in an epoch is written %3a)."""
    return f"{package}_{version.replace(':', '%3a')}_{arch}.deb"


def download(package: str, version: str, debs: Path) -> Path:
    """``apt-get download package=version`` into ``debs`` (skipped if already there)."""
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(deb_filename(package, version)))
    if found:
        return found[0]
    # As root, apt drops to the _apt user for downloads and warns when that user can't
    # write the target directory; downloading as root here avoids the noise.
    sandbox = ["-o", "APT::Sandbox::User=root"] if os.geteuid() == 0 else []
    run(["apt-get", "download", "-q", *sandbox, f"{package}={version}"],
        f"apt-get download {package}={version}", cwd=debs)
    found = sorted(debs.glob(deb_filename(package, version)))
    if not found:
        raise FetchError(f"apt-get download {package}={version}: no .deb appeared in {debs}")
    return found[0]


def extract_member(deb: Path, want, dest_dir: Path) -> tuple[str, Path]:
    """Extract the first regular file of ``deb`` whose path matches ``want`` (a callable
    on the member name without its leading "./") into ``dest_dir`` under its base name.

    Streams ``dpkg-deb --fsys-tarfile`` so nothing else in the package hits the disk.
    Returns (member name, written path); the file is written atomically.
    """
    try:
        proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as e:
        raise FetchError(f"cannot run dpkg-deb: {e.strerror}") from None
    result = None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                name = m.name[2:] if m.name.startswith("./") else m.name.lstrip("/")
                if m.isfile() and want(name):
                    src = tar.extractfile(m)
                    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=".part-")
                    with os.fdopen(fd, "wb") as f:
                        shutil.copyfileobj(src, f)
                    os.chmod(tmp, m.mode & 0o777)
                    target = dest_dir / os.path.basename(name)
                    os.replace(tmp, target)
                    result = (name, target)
                    break
    except tarfile.TarError as e:
        raise FetchError(f"{deb}: cannot read its data archive: {e}") from None
    finally:
        proc.stdout.close()
        err = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        rc = proc.wait()
    if result is None:
        if rc not in (0, -13):  # -13: SIGPIPE after we stopped reading, which is fine
            raise FetchError(f"dpkg-deb --fsys-tarfile {deb} failed: {_last_line(err)}")
        raise FetchError(f"{deb}: no matching file in the package")
    return result


# -- cache stamps --------------------------------------------------------------------
def read_stamp(path: Path) -> dict | None:
    """A JSON stamp whose "file" still exists with the recorded size, else None."""
    try:
        stamp = json.loads(path.read_text())
        f = Path(stamp["file"])
        if f.is_file() and f.stat().st_size == stamp["size"]:
            return stamp
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def write_stamp(path: Path, **fields) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def fail(prog: str, err: Exception) -> int:
    print(f"{prog}: error: {err}", file=sys.stderr)
    return 2
