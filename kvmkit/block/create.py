"""Creating images from ``-o key=value`` options, as ``qemu-img create`` does."""

from __future__ import annotations

import os

from kvmkit.block.image import check_image_size, open_image, probe_format, resolve_backing_path
from kvmkit.block.qcow2.image import Qcow2Image
from kvmkit.block.raw import RawImage
from kvmkit.block.units import parse_size
from kvmkit.errors import ImageError

QCOW2_OPTIONS = ("cluster_size", "compat", "lazy_refcounts", "refcount_bits",
                 "backing_file", "backing_fmt", "preallocation", "size")


def parse_options(text: str | None) -> dict[str, str]:
    """``a=1,b=2`` → {"a": "1", "b": "2"} (``,,`` escapes a comma like qemu's)."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for item in text.replace(",,", "\0").split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ImageError(f"invalid option {item!r}: expected key=value")
        out[key.strip()] = value.replace("\0", ",")
    return out


def _bool(key: str, value: str) -> bool:
    if value.lower() in ("on", "true", "yes", "1"):
        return True
    if value.lower() in ("off", "false", "no", "0"):
        return False
    raise ImageError(f"option {key} must be on or off, not {value!r}")


def create_image(path: str, fmt: str, size: int | None, *, backing: str | None = None,
                 backing_fmt: str | None = None, options: dict[str, str] | None = None
                 ) -> int:
    """Create ``path``; the size defaults to the backing file's. Returns the size."""
    opts = dict(options or {})
    backing = backing or opts.pop("backing_file", None)
    backing_fmt = backing_fmt or opts.pop("backing_fmt", None)
    if "size" in opts:
        size = parse_size(opts.pop("size"))
    if backing:
        if fmt != "qcow2":
            raise ImageError(f"the {fmt} format does not support backing files")
        bpath = resolve_backing_path(path, backing)
        if not os.path.exists(bpath):
            raise ImageError(f"could not open backing file {bpath!r}: no such file")
        if backing_fmt is None:
            backing_fmt = probe_format(bpath)
        if size is None:
            with open_image(bpath, backing_fmt, readonly=True) as b:
                size = b.size
    if size is None:
        raise ImageError("an image size is required (or a backing file to take it from)")
    check_image_size(size)
    if fmt == "raw":
        for key in opts:
            if key != "preallocation" or opts[key] != "off":
                raise ImageError(f"the raw format does not support option {key!r}")
        RawImage.create(path, size)
        return size
    if fmt != "qcow2":
        raise ImageError(f"unknown image format {fmt!r} (supported: raw, qcow2)")
    unknown = set(opts) - set(QCOW2_OPTIONS)
    if unknown:
        raise ImageError(f"unknown qcow2 option(s): {', '.join(sorted(unknown))}")
    if opts.get("preallocation", "off") != "off":
        raise ImageError("only preallocation=off is supported")
    compat = opts.get("compat", "1.1")
    if compat not in ("0.10", "1.1", "v2", "v3"):
        raise ImageError(f"compat must be 0.10 or 1.1, not {compat!r}")
    cluster = parse_size(opts.get("cluster_size", "64k"))
    if not 4096 <= cluster <= 2 << 20 and cluster not in (512, 1024, 2048):
        raise ImageError(f"cluster size {cluster} must be between 512 and 2M")
    Qcow2Image.create(path, size, cluster_size=cluster,
                      version=2 if compat in ("0.10", "v2") else 3,
                      backing_file=backing, backing_format=backing_fmt,
                      lazy_refcounts=_bool("lazy_refcounts", opts.get("lazy_refcounts", "off")),
                      refcount_bits=int(opts.get("refcount_bits", "16")))
    return size
