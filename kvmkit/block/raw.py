"""Raw images: the file is the disk. Every call maps straight onto a syscall.

Reads and writes go through ``os.preadv``/``os.pwritev`` into the caller's
buffers with no copies; discard punches holes so a raw file stays sparse; the
map comes from SEEK_DATA/SEEK_HOLE, so ``convert`` skips holes.
"""

from __future__ import annotations

import os
from typing import Sequence

from kvmkit.block import fileio
from kvmkit.block.image import BlockImage, Kind, LayerRun, check_image_size
from kvmkit.errors import ImageError

class RawImage(BlockImage):
    format = "raw"

    def __init__(self, path: str, fd: int, readonly: bool) -> None:
        super().__init__(path, fd, readonly)
        self._size = os.fstat(fd).st_size

    @classmethod
    def open(cls, path: str, readonly: bool = False) -> RawImage:
        try:
            fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as exc:
            raise ImageError(f"could not open {path!r}: {exc.strerror}") from None
        return cls(path, fd, readonly)

    @classmethod
    def create(cls, path: str, size: int) -> None:
        """Create a sparse raw file of ``size`` bytes (truncating an existing one)."""
        check_image_size(size)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ImageError(f"could not create {path!r}: {exc.strerror}") from None
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    @property
    def size(self) -> int:
        return self._size

    @property
    def cluster_size(self) -> int:
        return 4096

    def layer_runs(self, offset: int, length: int) -> list[LayerRun]:
        runs: list[LayerRun] = []
        end = offset + length
        while offset < end:
            is_data, stop = fileio.data_extents(self.fd, offset, end)
            stop = max(stop, offset + 1) if stop <= offset else stop
            kind = Kind.DATA if is_data else Kind.ZERO
            runs.append(LayerRun(offset, stop - offset, kind, offset if is_data else None))
            offset = stop
        return runs

    def _read_layer_run(self, run: LayerRun, skip: int, views: list[memoryview]) -> None:
        self._preadv_host(run.start + skip, views)

    def _preadv_host(self, offset: int, views: list[memoryview]) -> None:
        self._data_preadv(views, offset)

    def pread(self, offset: int, length: int) -> bytes:
        if self.direct is not None:
            return super().pread(offset, length)
        self.check_range(offset, length)
        return fileio.pread_exact(self.fd, offset, length)

    def preadv(self, offset: int, buffers: Sequence[memoryview]) -> int:
        views, total = self.request(offset, buffers)
        self._preadv_host(offset, views)
        return total

    def _pwritev(self, offset: int, buffers: Sequence[memoryview]) -> int:
        self.check_writable()
        views, total = self.request(offset, buffers)
        self._data_pwritev(views, offset)
        return total

    def flush(self) -> None:
        if not self.readonly:
            self._fdatasync()

    def _discard(self, offset: int, length: int) -> None:
        self.check_writable()
        self.check_range(offset, length)
        fileio.punch_hole(self.fd, offset, length)   # advisory: ignore if unsupported

    def _write_zeroes(self, offset: int, length: int) -> None:
        self.check_writable()
        self.check_range(offset, length)
        if not fileio.punch_hole(self.fd, offset, length):
            fileio.write_zero_bytes(self.fd, offset, length)

    def resize(self, new_size: int, shrink: bool = False) -> None:
        self.check_writable()
        check_image_size(new_size)
        if new_size < self._size and not shrink:
            raise ImageError("use --shrink to shrink an image (data past the new end is lost)")
        os.ftruncate(self.fd, new_size)
        self._size = new_size

