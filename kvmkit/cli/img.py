"""``kvmkit img``: the qemu-img jobs (create, info, check, convert, ...).

Thin: parses arguments, calls :mod:`kvmkit.block`, prints in qemu-img's
formats. Every handler returns an exit status; a :class:`KvmkitError`
becomes one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from typing import Any, Callable

from kvmkit.block import convert as conv
from kvmkit.block.create import create_image, parse_options
from kvmkit.block.image import open_image, probe_format, resolve_backing_path
from kvmkit.block.info import image_info
from kvmkit.block.qcow2 import snapshots as snap
from kvmkit.block.qcow2.check import check_image
from kvmkit.block.qcow2.image import Qcow2Image
from kvmkit.block.units import format_size, parse_size
from kvmkit.errors import KvmkitError, describe_host_error

PROG = "kvmkit img"


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except KvmkitError as exc:
            return _error(str(exc))
        except (OSError, MemoryError) as exc:
            return _error(describe_host_error(exc))
        except KeyboardInterrupt:
            return _error("interrupted")
    run.__name__ = handler.__name__
    return run


def _progress(enabled: bool, total: int, desc: str) -> tuple[Callable[[int], None] | None,
                                                             Callable[[], None]]:
    """A tqdm bar when asked (-p) or on a terminal; else no output at all."""
    if not enabled:
        return None, lambda: None
    from tqdm import tqdm
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
               file=sys.stderr, leave=True)
    return bar.update, bar.close


# -- create ------------------------------------------------------------------------------
def cmd_create(args: argparse.Namespace) -> int:
    opts = parse_options(",".join(args.options or []))
    size = parse_size(args.size) if args.size is not None else None
    size = create_image(args.filename, args.format, size, backing=args.backing,
                        backing_fmt=args.backing_format, options=opts)
    if not args.quiet:
        extra = ""
        if args.format == "qcow2":
            extra = f" cluster_size={parse_size(opts.get('cluster_size', '64k'))}"
            if args.backing:
                extra += f" backing_file={args.backing}"
                if args.backing_format:
                    extra += f" backing_fmt={args.backing_format}"
        print(f"Formatting '{args.filename}', fmt={args.format}{extra} size={size}")
    return 0


# -- info ---------------------------------------------------------------------------------
def _print_info(info: dict[str, Any]) -> None:
    print(f"image: {info['filename']}")
    print(f"file format: {info['format']}")
    print(f"virtual size: {format_size(info['virtual-size'])} ({info['virtual-size']} bytes)")
    print(f"disk size: {format_size(info['actual-size'])}")
    if "cluster-size" in info:
        print(f"cluster_size: {info['cluster-size']}")
    if "backing-filename" in info:
        print(f"backing file: {info['backing-filename']}")
        if "backing-filename-format" in info:
            print(f"backing file format: {info['backing-filename-format']}")
    if info.get("snapshots"):
        print("Snapshot list:")
        _print_snapshot_rows(info["snapshots"])
    spec = info.get("format-specific")
    if spec:
        print("Format specific information:")
        for key, value in spec["data"].items():
            text = str(value).lower() if isinstance(value, bool) else value
            print(f"    {key.replace('-', ' ')}: {text}")


def _print_snapshot_rows(rows: list[dict[str, Any]]) -> None:
    print(f"{'ID':<10}{'TAG':<18}{'VM SIZE':>7}{'DATE':>22}{'VM CLOCK':>13}{'ICOUNT':>13}")
    for s in rows:
        date = datetime.datetime.fromtimestamp(s["date-sec"]).strftime("%Y-%m-%d %H:%M:%S")
        secs = s["vm-clock-sec"]
        clock = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}." \
                f"{s['vm-clock-nsec'] // 1000000:03d}"
        print(f"{s['id']:<10}{s['name']:<18}{format_size(s['vm-state-size']):>7}"
              f"{date:>22}{clock:>13}{s['icount']:>13}")


def cmd_info(args: argparse.Namespace) -> int:
    with open_image(args.filename, args.format, readonly=True) as img:
        infos = [image_info(layer) for layer in (img.chain() if args.backing_chain else [img])]
    if args.output == "json":
        print(json.dumps(infos if args.backing_chain else infos[0], indent=4))
    else:
        for i, info in enumerate(infos):
            if i:
                print()
            _print_info(info)
    return 0


# -- check --------------------------------------------------------------------------------
def cmd_check(args: argparse.Namespace) -> int:
    fmt = args.format or probe_format(args.filename)
    if fmt != "qcow2":
        return _error(f"this image format ({fmt}) does not support checks")
    repair = args.repair is not None
    with Qcow2Image.open(args.filename, readonly=not repair, allow_corrupt=True) as img:
        result = check_image(img, repair=repair)
    if args.output == "json":
        print(json.dumps(result.to_json(), indent=4))
        return result.exit_code
    for line in result.messages:
        print(line, file=sys.stderr)
    if result.corruptions_fixed or result.leaks_fixed:
        print("The following inconsistencies were found and repaired:\n\n"
              f"    {result.leaks_fixed} leaked clusters\n"
              f"    {result.corruptions_fixed} corruptions\n\n"
              "Double checking the fixed image now...")
    if result.corruptions:
        print(f"\n{result.corruptions} errors were found on the image.\n"
              "Data may be corrupted, or further writes to the image may corrupt it.")
    if result.leaks:
        print(f"\n{result.leaks} leaked clusters were found on the image.\n"
              "This means waste of disk space, but no harm to data.")
    if result.check_errors:
        print(f"\n{result.check_errors} internal errors have occurred during the check.")
    if not (result.corruptions or result.leaks or result.check_errors):
        print("No errors were found on the image.")
    t = max(result.total_clusters, 1)
    alloc = result.allocated_clusters
    print(f"{alloc}/{result.total_clusters} = {100 * alloc / t:.2f}% allocated, "
          f"{100 * result.fragmented_clusters / max(alloc, 1):.2f}% fragmented, "
          f"{100 * result.compressed_clusters / max(alloc, 1):.2f}% compressed clusters")
    print(f"Image end offset: {result.image_end_offset}")
    return result.exit_code


# -- convert -------------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> int:
    opts = parse_options(",".join(args.options or []))
    if args.compress and args.output_format != "qcow2":
        return _error("compression is only supported with -O qcow2")
    if os.path.abspath(args.source) == os.path.abspath(args.target):
        return _error("source and target are the same file")
    with open_image(args.source, args.format, readonly=True) as src:
        create_image(args.target, args.output_format, src.size, options=opts)
        with open_image(args.target, args.output_format, backing=False, unsafe=True) as dst:
            show = args.progress or (sys.stderr.isatty() and not args.quiet)
            update, done = _progress(show, src.size, "convert")
            try:
                conv.copy_image(src, dst, compress=args.compress, progress=update)
            finally:
                done()
    return 0


# -- resize -------------------------------------------------------------------------------
def cmd_resize(args: argparse.Namespace) -> int:
    text = args.size
    with open_image(args.filename, args.format, backing=False) as img:
        if text[:1] in ("+", "-"):
            delta = parse_size(text[1:])
            new = img.size + delta if text[0] == "+" else img.size - delta
        else:
            new = parse_size(text)
        if new < 0:
            return _error(f"the new size would be negative ({new})")
        img.resize(new, shrink=args.shrink)
    if not args.quiet:
        print("Image resized.")
    return 0


# -- snapshot --------------------------------------------------------------------------
def cmd_snapshot(args: argparse.Namespace) -> int:
    fmt = args.format or probe_format(args.filename)
    if fmt != "qcow2":
        return _error(f"the {fmt} format does not support internal snapshots")
    readonly = args.list
    with Qcow2Image.open(args.filename, readonly=readonly) as img:
        if args.list:
            snaps = snap.read_snapshots(img)
            if snaps:
                print("Snapshot list:")
                _print_snapshot_rows(image_info(img)["snapshots"])
        elif args.create:
            snap.create_snapshot(img, args.create)
        elif args.apply:
            snap.apply_snapshot(img, args.apply)
        elif args.delete:
            snap.delete_snapshot(img, args.delete)
    return 0


# -- rebase ----------------------------------------------------------------------------
def cmd_rebase(args: argparse.Namespace) -> int:
    new_name = args.backing or None
    with open_image(args.filename, args.format, backing=not args.unsafe) as img:
        if not isinstance(img, Qcow2Image):
            return _error(f"the {img.format} format does not support backing files")
        new_fmt = args.backing_format
        if new_name and not args.unsafe:
            bpath = resolve_backing_path(args.filename, new_name)
            new_fmt = new_fmt or probe_format(bpath)
            new = open_image(bpath, new_fmt, readonly=True)
        else:
            new = None
        try:
            if not args.unsafe:
                update, done = _progress(args.progress, img.size, "rebase")
                try:
                    conv.rebase_data(img, img.backing, new, update)
                finally:
                    done()
                img.flush()
        finally:
            if new is not None:
                new.close()
        if new_name and new_fmt is None:
            bpath = resolve_backing_path(args.filename, new_name)
            new_fmt = probe_format(bpath) if os.path.exists(bpath) else None
        img.write_header(img.header.with_(backing_file=new_name,
                                          backing_format=new_fmt if new_name else None))
        img.flush()
    return 0


# -- commit -----------------------------------------------------------------------------
def cmd_commit(args: argparse.Namespace) -> int:
    with open_image(args.filename, args.format, backing=False) as top:
        name = top.backing_filename
        if not name:
            return _error(f"{args.filename} has no backing file to commit into")
        base_path = resolve_backing_path(args.filename, name)
        with open_image(base_path, top.backing_format) as base:
            update, done = _progress(args.progress, top.size, "commit")
            try:
                conv.commit_into_backing(top, base, update)
            finally:
                done()
        if not args.no_empty and isinstance(top, Qcow2Image):
            top.make_empty()
    if not args.quiet:
        print("Image committed.")
    return 0


# -- map --------------------------------------------------------------------------------
def cmd_map(args: argparse.Namespace) -> int:
    with open_image(args.filename, args.format, readonly=True) as img:
        extents = list(img.map())
    if args.output == "json":
        lines = []
        for e in extents:
            item = (f'{{ "start": {e.start}, "length": {e.length}, "depth": {e.depth}, '
                    f'"present": {str(e.present).lower()}, "zero": {str(e.zero).lower()}, '
                    f'"data": {str(e.data).lower()}')
            if e.offset is not None:
                item += f', "offset": {e.offset}'
            lines.append(item + "}")
        print("[" + ",\n".join(lines) + "]")
        return 0
    print(f"{'Offset':<16}{'Length':<16}{'Mapped to':<16}File")
    for e in extents:
        if e.data and e.offset is not None:
            print(f"{_hex(e.start):<16}{_hex(e.length):<16}{_hex(e.offset):<16}{e.filename}")
    return 0


def _hex(n: int) -> str:
    return "0" if n == 0 else hex(n)


# -- argument parsing --------------------------------------------------------------------
def _fmt_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--format", choices=("raw", "qcow2"), help="image format (probed)")


def add_parser(subparsers: Any) -> None:
    """Register ``img`` and its sub-commands on an argparse subparsers object."""
    img = subparsers.add_parser("img", help="create, inspect and convert disk images",
                                description="Disk image tool compatible with qemu-img.")
    sub = img.add_subparsers(dest="img_command", metavar="COMMAND", required=True)

    p = sub.add_parser("create", help="create a new image")
    p.add_argument("-f", "--format", choices=("raw", "qcow2"), default="raw")
    p.add_argument("-b", "--backing", help="backing file (linked clone)")
    p.add_argument("-F", "--backing-format", choices=("raw", "qcow2"))
    p.add_argument("-o", dest="options", action="append", help="key=value[,key=value]")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("filename")
    p.add_argument("size", nargs="?")
    p.set_defaults(func=_guarded(cmd_create))

    p = sub.add_parser("info", help="show information about an image")
    _fmt_arg(p)
    p.add_argument("--output", choices=("human", "json"), default="human")
    p.add_argument("--backing-chain", action="store_true")
    p.add_argument("filename")
    p.set_defaults(func=_guarded(cmd_info))

    p = sub.add_parser("check", help="check (and repair) a qcow2 image")
    _fmt_arg(p)
    p.add_argument("-r", dest="repair", choices=("leaks", "all"))
    p.add_argument("--output", choices=("human", "json"), default="human")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("filename")
    p.set_defaults(func=_guarded(cmd_check))

    p = sub.add_parser("convert", help="copy an image to a new one, maybe another format")
    _fmt_arg(p)
    p.add_argument("-O", dest="output_format", choices=("raw", "qcow2"), default="raw")
    p.add_argument("-o", dest="options", action="append")
    p.add_argument("-c", dest="compress", action="store_true", help="compress (qcow2)")
    p.add_argument("-p", dest="progress", action="store_true", help="show progress")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("source")
    p.add_argument("target")
    p.set_defaults(func=_guarded(cmd_convert))

    p = sub.add_parser("resize", help="grow or shrink an image")
    _fmt_arg(p)
    p.add_argument("--shrink", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("filename")
    p.add_argument("size", help="new size, or +SIZE / -SIZE")
    p.set_defaults(func=_guarded(cmd_resize))

    p = sub.add_parser("snapshot", help="list, create, apply or delete internal snapshots")
    _fmt_arg(p)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("-l", dest="list", action="store_true")
    g.add_argument("-c", dest="create", metavar="NAME")
    g.add_argument("-a", dest="apply", metavar="NAME")
    g.add_argument("-d", dest="delete", metavar="NAME")
    p.add_argument("filename")
    p.set_defaults(func=_guarded(cmd_snapshot))

    p = sub.add_parser("rebase", help="change the backing file")
    _fmt_arg(p)
    p.add_argument("-u", dest="unsafe", action="store_true", help="only rewrite the name")
    p.add_argument("-b", dest="backing", required=True, help='new backing file ("" for none)')
    p.add_argument("-F", dest="backing_format", choices=("raw", "qcow2"))
    p.add_argument("-p", dest="progress", action="store_true")
    p.add_argument("filename")
    p.set_defaults(func=_guarded(cmd_rebase))

    p = sub.add_parser("commit", help="write an image's data into its backing file")
    _fmt_arg(p)
    p.add_argument("-d", dest="no_empty", action="store_true",
                   help="do not empty the image afterwards")
    p.add_argument("-p", dest="progress", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.add_argument("filename")
    p.set_defaults(func=_guarded(cmd_commit))

    p = sub.add_parser("map", help="show where an image's data is")
    _fmt_arg(p)
    p.add_argument("--output", choices=("human", "json"), default="human")
    p.add_argument("filename")
    p.set_defaults(func=_guarded(cmd_map))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmkit")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main(["img", *sys.argv[1:]] if sys.argv[1:2] != ["img"] else sys.argv[1:]))
