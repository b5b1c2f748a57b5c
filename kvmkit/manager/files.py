"""Metadata on disk that is never half-written: write a temporary file,
fsync it, rename it over the old one, fsync the directory.

A reader (or a manager killed at any instruction) sees the old version or
the new one, never a mix; a crash leaves at most a ``.tmp`` file, which
:func:`is_temporary` lets listings skip and the consistency check removes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def is_temporary(name: str) -> bool:
    return TMP_MARK in name


def fsync_path(path: Path, flags: int = 0) -> None:
    """fsync a file written by someone else (an image tool, the VMM)."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fsync_path(path, os.O_DIRECTORY)


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}{TMP_MARK}{os.getpid()}-{os.urandom(3).hex()}")
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.rename(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def read_json(path: Path, default: Any = None) -> Any:
    """The file's value, or ``default`` if it does not exist (or is not JSON:
    only files written by :func:`atomic_write` are read, so that means it
    was written by something else)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return default
    except ValueError:
        return default


def remove(path: Path) -> None:
    """Unlink and fsync the directory (a removal must survive a crash too)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(Path(path).parent)
