"""A writer for the "newc" cpio format the kernel unpacks as initramfs.

Written here rather than by calling ``cpio`` so that no root is needed for
device nodes and 0:0 ownership, and so the archive is byte-for-byte
reproducible (fixed mtimes, inode numbers in order): the same inputs give the
same file, which keeps the cache honest.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass
from typing import BinaryIO

_MAGIC = b"070701"
_TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member. ``name`` is relative, without a leading slash."""

    name: str
    mode: int  # includes the file type bits (stat.S_IFREG | 0o755, ...)
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0
    uid: int = 0
    gid: int = 0
    mtime: int = 0


def directory(name: str, perm: int = 0o755) -> Entry:
    """A directory entry."""
    return Entry(name, stat.S_IFDIR | perm)


def regular(name: str, data: bytes, perm: int = 0o644) -> Entry:
    """A regular file with contents ``data``."""
    return Entry(name, stat.S_IFREG | perm, data)


def symlink(name: str, target: str) -> Entry:
    """A symbolic link; newc stores the target as the file data."""
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    """A character device node (e.g. /dev/console 5:1), made without root."""
    return Entry(name, stat.S_IFCHR | perm, rdev_major=major, rdev_minor=minor)


def _pad(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(entry: Entry, ino: int, name: bytes) -> bytes:
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (ino, entry.mode, entry.uid, entry.gid, nlink, entry.mtime, len(entry.data),
              0, 0, entry.rdev_major, entry.rdev_minor, len(name) + 1, 0)
    return _MAGIC + b"".join(b"%08X" % f for f in fields)


def _checked(entry: Entry, name: str) -> bytes:
    """The name as stored, after refusing what newc cannot say: a NUL ends
    the name early (the kernel would unpack a different file), and every
    header field is eight hex digits (a larger value shifts every later field)."""
    try:
        raw = name.encode()
    except UnicodeEncodeError:
        raise ValueError(f"cpio entry name {entry.name!r} is not valid UTF-8 text") from None
    if b"\0" in raw:
        raise ValueError(f"cpio entry name {entry.name!r} contains a NUL byte")
    for field in ("mode", "uid", "gid", "mtime", "rdev_major", "rdev_minor"):
        value = getattr(entry, field)
        if not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"cpio entry {entry.name!r}: {field} {value} does not fit in 32 bits")
    if len(entry.data) > 0xFFFFFFFF:
        raise ValueError(f"cpio entry {entry.name!r}: {len(entry.data)} bytes is too large for newc")
    return raw


def write(out: BinaryIO, entries: list[Entry]) -> None:
    """Write ``entries`` (parents before children) and the trailer to ``out``."""
    seen: set[str] = set()
    for ino, entry in enumerate([*entries, Entry(_TRAILER, 0)], start=1):
        name = entry.name.lstrip("/")
        if not name or name in seen:
            raise ValueError(f"cpio entry name {entry.name!r} is empty or repeated")
        seen.add(name)
        raw = _checked(entry, name)
        head = _header(entry, 0 if name == _TRAILER else ino, raw) + raw + b"\0"
        out.write(head + _pad(len(head)))
        out.write(entry.data + _pad(len(entry.data)))
