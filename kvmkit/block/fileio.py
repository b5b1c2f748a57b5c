"""Thin helpers over a host file descriptor: exact reads, hole punching, sync.

Python's ``os`` module has no ``fallocate`` with flags, so hole punching and
zero ranges go through libc via ctypes; when the file system refuses them the
callers fall back to writing zeros, which is always correct, only slower.
"""

from __future__ import annotations

import ctypes
import errno
import os

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

# CDLL(None) is the running process, which links libc: no ldconfig lookup at import.
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate
_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_fallocate.restype = ctypes.c_int

ZERO_CHUNK = bytes(1 << 20)


def fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    """Call fallocate(2); return False when the file system does not support ``mode``."""
    if length <= 0:
        return True
    if _fallocate(fd, mode, offset, length) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err))


def punch_hole(fd: int, offset: int, length: int) -> bool:
    """Deallocate a range (reads return zeros afterwards) without changing the size."""
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)


def write_zero_bytes(fd: int, offset: int, length: int) -> None:
    """Write real zero bytes, in 1 MiB pieces (the portable fallback)."""
    while length > 0:
        n = min(length, len(ZERO_CHUNK))
        os.pwrite(fd, memoryview(ZERO_CHUNK)[:n], offset)
        offset += n
        length -= n


def pread_exact(fd: int, offset: int, length: int) -> bytes:
    """Read ``length`` bytes; bytes past the end of the file read as zeros."""
    data = os.pread(fd, length, offset)
    if len(data) < length:
        # A short read means EOF; loop in case of a partial read mid-file.
        parts = [data]
        got = len(data)
        while got < length:
            more = os.pread(fd, length - got, offset + got)
            if not more:
                parts.append(bytes(length - got))
                break
            parts.append(more)
            got += len(more)
        data = b"".join(parts)
    return data


def pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int) -> None:
    """Write every byte (os.pwrite may write less than asked)."""
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def data_extents(fd: int, offset: int, end: int) -> tuple[bool, int]:
    """Is ``offset`` in data or a hole, and where does that run end (SEEK_DATA/SEEK_HOLE)?

    Falls back to "all data" on file systems without hole reporting.
    """
    try:
        data = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:        # no data after offset: a hole to EOF
            return False, end
        return True, end
    if data > offset:
        return False, min(data, end)
    try:
        hole = os.lseek(fd, offset, os.SEEK_HOLE)
    except OSError:
        return True, end
    return True, min(hole, end)


IOV_MAX = 1024


def advance_views(views: list[memoryview], n: int) -> list[memoryview]:
    """Drop the first ``n`` bytes of a scatter list."""
    out = list(views)
    while out and n >= len(out[0]):
        n -= len(out[0])
        out.pop(0)
    if out and n:
        out[0] = out[0][n:]
    return out


def preadv_full(fd: int, views: list[memoryview], offset: int) -> None:
    """Fill every view from ``offset`` on; bytes past the end of the file read as zeros."""
    while views:
        batch = views[:IOV_MAX]
        got = os.preadv(fd, batch, offset)
        if got == 0:
            for v in views:
                v[:] = bytes(len(v))
            return
        views = advance_views(views, got)
        offset += got


def pwritev_full(fd: int, views: list[memoryview], offset: int) -> None:
    """Write every view at ``offset`` on (os.pwritev may write less than asked)."""
    while views:
        n = os.pwritev(fd, views[:IOV_MAX], offset)
        views = advance_views(views, n)
        offset += n


def copy_range(src_fd: int, src_off: int, dst_fd: int, dst_off: int, length: int) -> None:
    """Copy bytes file-to-file inside the kernel (copy_file_range), no user-space copy.

    Falls back to pread/pwrite where the kernel refuses (e.g. across file
    systems); bytes past the source's end are left unwritten (they read as zeros
    in a fresh target).
    """
    while length > 0:
        n = min(length, 1 << 30)
        try:
            done = os.copy_file_range(src_fd, dst_fd, n, src_off, dst_off)
        except OSError:
            done = 0
        if done <= 0:
            data = os.pread(src_fd, min(n, 8 << 20), src_off)
            if not data:
                return
            pwrite_all(dst_fd, data, dst_off)
            done = len(data)
        src_off += done
        dst_off += done
        length -= done


SYS_CACHESTAT = 451                     # x86_64; Linux 6.5+


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class PageCacheStat(ctypes.Structure):
    """What ``cachestat(2)`` reports for a range of a file, in pages."""
    _fields_ = [(n, ctypes.c_uint64) for n in
                ("cache", "dirty", "writeback", "evicted", "recently_evicted")]


def cachestat(fd: int, offset: int = 0, length: int = 0) -> PageCacheStat | None:
    """How much of ``fd``'s [offset, +length) (0: to the end) sits in the
    host page cache, and how much of it is dirty: the evidence that a cache
    mode does what it says (O_DIRECT leaves nothing cached, writethrough
    nothing dirty).  None where the kernel lacks the call."""
    st = PageCacheStat()
    rng = _CachestatRange(offset, length)
    if _libc.syscall(SYS_CACHESTAT, fd, ctypes.byref(rng), ctypes.byref(st), 0) == 0:
        return st
    err = ctypes.get_errno()
    if err == errno.ENOSYS:
        return None
    raise OSError(err, os.strerror(err))
