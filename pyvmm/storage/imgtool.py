"""``pyvmm img``: create, info, check and convert disk images, with qemu-img's
arguments and JSON keys for the common cases.

    pyvmm img create [-f raw|qcow2] [-o opt=val,...] [-b BACKING [-F FMT]] FILE [SIZE]
    pyvmm img info [-f FMT] [--output human|json] FILE
    pyvmm img check [-f qcow2] [-r leaks] [--output human|json] FILE
    pyvmm img convert [-f FMT] [-O FMT] [-c] [-o opt=val,...] SRC DST

Exit status as qemu-img: 0 success; 1 error; for check 2 = corruptions found,
3 = only leaks found.
"""
import json
import sys

from pyvmm.errors import PyvmmError
from pyvmm.storage.image import create_image, open_image, probe

_SUFFIX = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_CREATE_OPTIONS = {"cluster_size": "size", "compat": "str", "refcount_bits": "int",
                   "backing_file": "str", "backing_fmt": "str"}


def parse_size(text):
    """'10G', '512k', '1048576' -> bytes (powers of 1024, as qemu-img)."""
    t = text.strip().lower()
    num = t.rstrip("bkmgtp")
    unit = t[len(num):]
    try:
        value = float(num) * _SUFFIX[unit]
    except (ValueError, KeyError):
        raise PyvmmError(f"img: invalid size {text!r} (use a number with optional k, M, G, T suffix)") from None
    if value < 0 or value != int(value):
        raise PyvmmError(f"img: invalid size {text!r}")
    return int(value)


def parse_options(text, fmt):
    """'-o cluster_size=64k,compat=1.1' -> keyword arguments of create_image."""
    out = {}
    for item in filter(None, (text or "").split(",")):
        key, eq, value = item.partition("=")
        kind = _CREATE_OPTIONS.get(key)
        if not eq or kind is None or fmt != "qcow2":
            raise PyvmmError(f"img: unknown {fmt} option {item!r} (qcow2 knows: {', '.join(_CREATE_OPTIONS)})")
        out[key] = parse_size(value) if kind == "size" else int(value) if kind == "int" else value
    return out


def add_img_arguments(subparsers):
    img = subparsers.add_parser("img", help="create, inspect, check and convert disk images (raw, qcow2)")
    sub = img.add_subparsers(dest="img_command", required=True)
    c = sub.add_parser("create", help="create a disk image")
    c.add_argument("-f", dest="fmt", default="raw", choices=("raw", "qcow2"))
    c.add_argument("-o", dest="options", default="")
    c.add_argument("-b", dest="backing_file")
    c.add_argument("-F", dest="backing_fmt")
    c.add_argument("-q", dest="quiet", action="store_true")
    c.add_argument("filename")
    c.add_argument("size", nargs="?")
    for name, text in (("info", "show an image's format, sizes and backing file"),
                       ("check", "check a qcow2 image's metadata for corruptions and leaks")):
        p = sub.add_parser(name, help=text)
        p.add_argument("-f", dest="fmt", choices=("raw", "qcow2"))
        p.add_argument("--output", choices=("human", "json"), default="human")
        p.add_argument("filename")
        if name == "check":
            p.add_argument("-r", dest="repair", choices=("leaks",))
    v = sub.add_parser("convert", help="copy an image into another format (sparse, optionally compressed)")
    v.add_argument("-f", dest="fmt", choices=("raw", "qcow2"))
    v.add_argument("-O", dest="out_fmt", default="raw", choices=("raw", "qcow2"))
    v.add_argument("-c", dest="compress", action="store_true")
    v.add_argument("-o", dest="options", default="")
    v.add_argument("-q", dest="quiet", action="store_true")
    v.add_argument("source")
    v.add_argument("target")
    return img


def run_img(args, out=None):
    """Run one ``pyvmm img`` sub-command; returns the exit status."""
    out = out or sys.stdout
    try:
        return _COMMANDS[args.img_command](args, out)
    except PyvmmError as e:
        print(f"pyvmm img: {e}", file=sys.stderr)
        return 1


def _create(args, out):
    opts = parse_options(args.options, args.fmt)
    if args.backing_file:
        opts["backing_file"] = args.backing_file
    if args.backing_fmt:
        opts["backing_fmt"] = args.backing_fmt
    if args.fmt == "raw" and opts:
        raise PyvmmError("img create: raw images take no options or backing file")
    size = parse_size(args.size) if args.size is not None else None
    if size is None and args.fmt == "raw":
        raise PyvmmError(f"img create: {args.filename}: give the image size")
    create_image(args.filename, args.fmt, size, **opts)
    if not args.quiet:
        out.write(f"Formatting '{args.filename}', fmt={args.fmt} size={size if size is not None else 'backing'}\n")
    return 0


def _info(args, out):
    with open_image(args.filename, args.fmt, readonly=True) as img:
        info = {"virtual-size": img.size, "filename": args.filename, **img.info()}
    if args.output == "json":
        out.write(json.dumps(info, indent=4) + "\n")
        return 0
    out.write(f"image: {args.filename}\nfile format: {info['format']}\n"
              f"virtual size: {_human(info['virtual-size'])} ({info['virtual-size']} bytes)\n"
              f"disk size: {_human(info['actual-size'])}\n")
    if "cluster-size" in info:
        out.write(f"cluster_size: {info['cluster-size']}\n")
    if "backing-filename" in info:
        out.write(f"backing file: {info['backing-filename']}\n")
        if "backing-filename-format" in info:
            out.write(f"backing file format: {info['backing-filename-format']}\n")
    specific = info.get("format-specific", {}).get("data")
    if specific:
        out.write("Format specific information:\n")
        for key, value in specific.items():
            out.write(f"    {key.replace('-', ' ')}: {str(value).lower() if isinstance(value, bool) else value}\n")
    return 0


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.3g} {unit}"
        n /= 1024


def _check(args, out):
    fmt = args.fmt or probe(args.filename)
    if fmt != "qcow2":
        raise PyvmmError(f"img check: {args.filename}: format {fmt} has no metadata to check")
    from pyvmm.storage.qcow2.check import check_qcow2
    r = check_qcow2(args.filename, repair_leaks=args.repair == "leaks")
    if args.output == "json":
        out.write(json.dumps(r.as_json(), indent=4) + "\n")
    else:
        for line in r.messages:
            out.write(line + "\n")
        if r.leaks_fixed:
            out.write(f"The following inconsistencies were found and repaired:\n\n    {r.leaks_fixed} leaked clusters\n\n")
        if r.corruptions:
            out.write(f"\n{r.corruptions} errors were found on the image.\n"
                      f"Data may be corrupted, or further writes to the image may corrupt it.\n")
        if r.leaks:
            out.write(f"\n{r.leaks} leaked clusters were found on the image.\n"
                      f"This means waste of disk space, but no harm to data.\n")
        if not r.corruptions and not r.leaks and not r.check_errors:
            out.write("No errors were found on the image.\n")
        out.write(f"Image end offset: {r.image_end_offset}\n")
    if r.corruptions or r.check_errors:
        return 2
    return 3 if r.leaks else 0


def _convert(args, out):
    opts = parse_options(args.options, args.out_fmt)
    if args.compress and args.out_fmt != "qcow2":
        raise PyvmmError("img convert: -c (compression) needs -O qcow2")
    with open_image(args.source, args.fmt, readonly=True) as src:
        create_image(args.target, args.out_fmt, src.size, **opts)
        with open_image(args.target, args.out_fmt) as dst:
            copy_image(src, dst, compress=args.compress)
    return 0


def copy_image(src, dst, compress=False):
    """Copy every non-zero cluster of ``src`` into the fresh, all-zero ``dst``
    (runs of non-zero clusters in one write; with ``compress`` one cluster each)."""
    step = getattr(dst, "cs", 1 << 16)
    chunk = max(step, 1 << 20) // step * step
    zeros = bytes(step)
    for pos in range(0, src.size, chunk):
        data = src.read(pos, min(chunk, src.size - pos))
        run = None
        for at in range(0, len(data) + step, step):
            piece = data[at:at + step]
            if piece and piece != zeros[:len(piece)]:
                if compress:
                    dst.write_compressed(pos + at, piece)
                elif run is None:
                    run = at
            elif run is not None:
                dst.write(pos + run, data[run:at])
                run = None


_COMMANDS = {"create": _create, "info": _info, "check": _check, "convert": _convert}
