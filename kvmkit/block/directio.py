"""Guest data through ``O_DIRECT``: a second descriptor on the image file
that bypasses the host page cache, with bounce buffers for what O_DIRECT
cannot take as it is.

O_DIRECT wants the file offset, the length and the memory address of every
transfer aligned to the file system's logical block size (512 or 4096
bytes).  Guest requests usually are (sectors, page-aligned buffers), and go
straight through; anything else (an odd-sized request, a buffer at an odd
address, a partial block at the end of the image) is copied through a
page-aligned buffer, with a read-modify-write of the partial head and tail
blocks.  Writes are serialised by a lock so two read-modify-writes of one
block cannot lose each other's bytes; a device's requests run on one I/O
thread anyway, so the lock costs nothing there.

The file size is kept exactly as a buffered write would leave it: a
read-modify-write that had to write a whole block past the old end of the
file is truncated back to the request's end.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import threading

from kvmkit.block.image import iov_slices
from kvmkit.errors import ImageError

BOUNCE_BYTES = 1 << 20                  # per copy; larger requests go in pieces
ALIGNMENTS = (512, 4096)                # logical block sizes to probe, smallest first


class DirectIO:
    """``preadv``/``pwritev`` of guest data on an O_DIRECT descriptor."""

    def __init__(self, path: str, readonly: bool) -> None:
        flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC | os.O_DIRECT
        try:
            self.fd = os.open(path, flags)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise ImageError(f"{path}: the file system refuses O_DIRECT, which cache=none and "
                                 "cache=directsync need (ramfs has none, nor had tmpfs before Linux "
                                 "6.6): use cache=writeback or writethrough") from None
            raise ImageError(f"could not open {path!r} for O_DIRECT: {exc.strerror}") from None
        self.path = path
        self._bounce = mmap.mmap(-1, BOUNCE_BYTES)
        self._bounce_view = memoryview(self._bounce)
        self._lock = threading.Lock()
        self.direct_ops = 0                 # transfers that went straight through
        self.bounced_ops = 0                # transfers copied through the bounce buffer
        try:
            self.align = self._probe_alignment()
        except BaseException:
            self.close()
            raise

    def _probe_alignment(self) -> int:
        """The smallest block size this file takes direct reads in (QEMU
        probes the same way: try, and see whether the kernel says EINVAL)."""
        for align in ALIGNMENTS:
            try:
                os.preadv(self.fd, [self._bounce_view[:align]], 0)
                return align
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise ImageError(f"{self.path}: O_DIRECT read failed: {exc.strerror}") from None
        raise ImageError(f"{self.path}: O_DIRECT reads fail at every block size up to "
                         f"{ALIGNMENTS[-1]}: use cache=writeback")

    # -- alignment ------------------------------------------------------------------
    def _aligned(self, offset: int, views: list[memoryview]) -> bool:
        a = self.align - 1
        if offset & a:
            return False
        for v in views:
            if len(v) & a or _address(v) & a:
                return False
        return True

    # -- reads --------------------------------------------------------------------------
    def preadv(self, views: list[memoryview], offset: int) -> None:
        """Fill ``views`` from file ``offset``; bytes past the end read as zeros."""
        total = sum(len(v) for v in views)
        if self._aligned(offset, views):
            self.direct_ops += 1
            _read_direct(self.fd, views, offset, total)
            return
        self.bounced_ops += 1
        with self._lock:                    # the bounce buffer is shared
            pos, end = offset, offset + total
            while pos < end:
                a0, a1 = self._window(pos, end)
                self._read_blocks(a0, a1 - a0)
                take = min(end, a1) - pos
                src = self._bounce_view[pos - a0:pos - a0 + take]
                done = 0
                for v in iov_slices(views, pos - offset, take):
                    v[:] = src[done:done + len(v)]
                    done += len(v)
                pos += take

    # -- writes -------------------------------------------------------------------------
    def pwritev(self, views: list[memoryview], offset: int) -> None:
        """Write every byte of ``views`` at file ``offset``."""
        total = sum(len(v) for v in views)
        if total == 0:
            return
        if self._aligned(offset, views):
            self.direct_ops += 1
            with self._lock:
                _write_direct(self.fd, views, offset)
            return
        self.bounced_ops += 1
        with self._lock:
            old_size = os.fstat(self.fd).st_size
            pos, end = offset, offset + total
            while pos < end:
                a0, a1 = self._window(pos, end)
                put = min(end, a1) - pos
                if pos > a0:                                  # partial head block: keep its old bytes
                    self._read_blocks(a0, self.align)
                if pos + put < a1:                            # partial tail block (may be the head one)
                    self._read_blocks(a1 - self.align, self.align, at=a1 - self.align - a0)
                dst = self._bounce_view[pos - a0:pos - a0 + put]
                done = 0
                for v in iov_slices(views, pos - offset, put):
                    dst[done:done + len(v)] = v
                    done += len(v)
                _write_direct(self.fd, [self._bounce_view[:a1 - a0]], a0)
                pos += put
            if end > old_size and os.fstat(self.fd).st_size > end:
                os.ftruncate(self.fd, end)                    # as a buffered write would leave it

    # -- helpers --------------------------------------------------------------------
    def _window(self, pos: int, end: int) -> tuple[int, int]:
        """The aligned block range [a0, a1) to copy next: starts at the block
        holding ``pos``, ends at the block holding ``end`` or a bounce
        buffer's worth later."""
        a = self.align
        a0 = pos - pos % a
        a1 = min(-(-end // a) * a, a0 + BOUNCE_BYTES)
        return a0, a1

    def _read_blocks(self, offset: int, length: int, at: int = 0) -> None:
        """Read aligned ``[offset, offset+length)`` into the bounce buffer at ``at``,
        zero-filling past the end of the file."""
        _read_direct(self.fd, [self._bounce_view[at:at + length]], offset, length)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self._bounce_view.release()
        self._bounce.close()


def _address(view: memoryview) -> int:
    """Where a buffer's bytes are (only aligned ones can go to O_DIRECT).  A
    read-only buffer cannot be asked; it is treated as unaligned (bounced)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    except (TypeError, ValueError):
        return 1


def _read_direct(fd: int, views: list[memoryview], offset: int, total: int) -> None:
    """Aligned reads; the first short read is the end of the file, and
    everything after it reads as zeros (a second O_DIRECT read from an
    unaligned place would fail with EINVAL)."""
    got = 0
    while got < total:
        rest = iov_slices(views, got, total - got)
        batch = rest[:1024]
        n = os.preadv(fd, batch, offset + got)
        got += max(n, 0)
        if n < sum(len(v) for v in batch):
            break
    for v in iov_slices(views, got, total - got):
        v[:] = bytes(len(v))


def _write_direct(fd: int, views: list[memoryview], offset: int) -> None:
    """Aligned writes; O_DIRECT writes complete whole or fail."""
    done, total = 0, sum(len(v) for v in views)
    while done < total:
        n = os.pwritev(fd, iov_slices(views, done, total - done)[:1024], offset + done)
        if n <= 0:
            raise OSError(errno.EIO, "short O_DIRECT write")
        done += n
