"""Files that are never half-written: write a temporary file, fsync it,
rename it over the old one, fsync the directory.  Used by every layer that
keeps state on disk (the manager's metadata, the guest cache's answers,
the jail's handover records).

A reader (or a writer killed at any instruction) sees the old version or
the new one, never a mix; a crash leaves at most a temporary named with
:data:`TMP_MARK`, which :func:`is_temporary` lets listings skip.
"""

from __future__ import annotations

import os
from pathlib import Path

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
