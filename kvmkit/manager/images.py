"""The disk-image operations the manager needs, on :mod:`kvmkit.block`.

New images are built under a temporary name and renamed into place, so a
manager killed mid-copy leaves a stray ``.tmp-`` file (which the consistency
check removes), never a half-copied volume under the real name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kvmkit.block import create_image, open_image
from kvmkit.block.image import probe_format
from kvmkit.errors import ImageError
from kvmkit.manager.errors import StorageError
from kvmkit.manager.files import TMP_MARK, fsync_dir, fsync_path


@dataclass(frozen=True)
class ImageInfo:
    format: str
    capacity: int              # the guest-visible size
    allocation: int            # bytes the file takes on the host
    backing: str | None


def info(path: Path) -> ImageInfo:
    try:
        fmt = probe_format(str(path))
        with open_image(str(path), fmt, readonly=True, backing=False) as img:
            return ImageInfo(fmt, img.size, img.actual_size(), img.backing_filename)
    except ImageError as e:
        raise StorageError(str(e)) from None


def _tmp(path: Path) -> Path:
    return path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}")


def _publish(tmp: Path, path: Path, replace: bool = False) -> None:
    if not replace and path.exists():
        tmp.unlink(missing_ok=True)
        raise StorageError(f"storage volume '{path.name}' exists already")
    os.rename(tmp, path)
    fsync_dir(path.parent)


def create(path: Path, fmt: str, size: int | None, backing: Path | None = None,
           backing_fmt: str | None = None) -> None:
    """A new empty image (or an overlay of ``backing``) at ``path``."""
    if path.exists():
        raise StorageError(f"storage volume '{path.name}' exists already")
    tmp = _tmp(path)
    try:
        create_image(str(tmp), fmt, size, backing=str(backing) if backing else None,
                     backing_fmt=backing_fmt or (probe_format(str(backing)) if backing else None))
        fsync_path(tmp)
    except ImageError as e:
        tmp.unlink(missing_ok=True)
        raise StorageError(str(e)) from None
    _publish(tmp, path)


def overlay(base: Path, path: Path, replace: bool = False) -> None:
    """A qcow2 at ``path`` whose backing file is ``base`` (a linked clone)."""
    tmp = _tmp(path)
    try:
        create_image(str(tmp), "qcow2", None, backing=str(base), backing_fmt=probe_format(str(base)))
        fsync_path(tmp)
    except ImageError as e:
        tmp.unlink(missing_ok=True)
        raise StorageError(str(e)) from None
    _publish(tmp, path, replace)


def copy(src: Path, dst: Path, fmt: str | None = None) -> None:
    """A full, independent copy (the whole backing chain flattened)."""
    from kvmkit.block.convert import copy_image
    tmp = _tmp(dst)
    try:
        with open_image(str(src), readonly=True) as s:
            out_fmt = fmt or s.format
            create_image(str(tmp), out_fmt, s.size)
            with open_image(str(tmp), out_fmt, backing=False) as d:
                copy_image(s, d)
                d.flush()
        fsync_path(tmp)
    except ImageError as e:
        tmp.unlink(missing_ok=True)
        raise StorageError(str(e)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _publish(tmp, dst)


def resize(path: Path, size: int, shrink: bool = False) -> None:
    try:
        with open_image(str(path), backing=False) as img:
            if size < img.size and not shrink:
                raise StorageError("Can't shrink capacity below current capacity unless shrink flag explicitly specified")
            img.resize(size, shrink=shrink)
            img.flush()
    except ImageError as e:
        raise StorageError(str(e)) from None
