"""POSIX access ACLs, read and written as the kernel's xattr (no setfacl
needed): how a jailed VM's uid is let read a file it shares with others,
such as a snapshot that several VMs restore copy-on-write at once.  Its
owner stays; each VM adds, then removes, an entry for its own uid."""

from __future__ import annotations

import os
import stat
import struct

from kvmkit.errors import host_error

XATTR = "system.posix_acl_access"
VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
_ENTRY = struct.Struct("<HHI")


def _read(path: str) -> list[tuple[int, int, int]]:
    try:
        raw = os.getxattr(path, XATTR)
    except OSError:
        raw = b""
    if len(raw) < 4 or struct.unpack_from("<I", raw)[0] != VERSION:
        mode = os.stat(path).st_mode
        return [(USER_OBJ, (mode >> 6) & 7, UNDEFINED_ID), (GROUP_OBJ, (mode >> 3) & 7, UNDEFINED_ID),
                (OTHER, mode & 7, UNDEFINED_ID)]
    return [_ENTRY.unpack_from(raw, off) for off in range(4, len(raw), _ENTRY.size)]


def _write(path: str, entries: list[tuple[int, int, int]]) -> None:
    entries = [e for e in entries if e[0] != MASK]
    if any(tag in (USER, GROUP) for tag, _, _ in entries):
        mask = 0
        for tag, perm, _ in entries:
            if tag in (USER, GROUP, GROUP_OBJ):
                mask |= perm
        entries.append((MASK, mask, UNDEFINED_ID))
    entries.sort(key=lambda e: (e[0], e[2]))
    raw = struct.pack("<I", VERSION) + b"".join(_ENTRY.pack(*e) for e in entries)
    os.setxattr(path, XATTR, raw)


def grant(path: str, uid: int, perm: int) -> None:
    """Let ``uid`` read (4), write (2), search (1) ``path``, whatever its owner and mode."""
    try:
        entries = [e for e in _read(path) if not (e[0] == USER and e[2] == uid)]
        _write(path, entries + [(USER, perm, uid)])
    except OSError as exc:
        raise host_error(f"{path}: cannot give the VM's user access (ACL)", exc) from None


def revoke(path: str, uid: int) -> None:
    """Take back what :func:`grant` gave (other VMs' entries stay)."""
    try:
        _write(path, [e for e in _read(path) if not (e[0] == USER and e[2] == uid)])
    except OSError:
        pass                                     # gone meanwhile: nothing to take back


def grant_tree(directory: str, uid: int, writable: bool) -> list[str]:
    """:func:`grant` on a directory (search) and the files in it; returns the paths, for :func:`revoke`."""
    done = [directory]
    grant(directory, uid, 5 | (2 if writable else 0))
    for name in sorted(os.listdir(directory)):
        p = os.path.join(directory, name)
        if stat.S_ISREG(os.lstat(p).st_mode):
            grant(p, uid, 4 | (2 if writable else 0))
            done.append(p)
    return done
