"""An LRU cache of cluster-sized metadata tables (L2 tables, refcount blocks).

Write-back: a changed table is marked dirty and written on ``write_dirty``
or eviction. ``before_write`` lets the owner enforce ordering (an L2 table
must not reach the disk before the refcounts of the clusters it points to).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, TypeVar

from kvmkit.block import fileio
from kvmkit.errors import ImageError

T = TypeVar("T")


class TableCache(Generic[T]):
    def __init__(self, fd: int, cluster_size: int, capacity: int, name: str,
                 load: Callable[[bytes], T], dump: Callable[[T], bytes],
                 file_end: Callable[[], int]) -> None:
        self.fd = fd
        self.cluster_size = cluster_size
        self.capacity = max(4, capacity)
        self.name = name
        self._load = load
        self._dump = dump
        self._file_end = file_end
        self._tables: OrderedDict[int, T] = OrderedDict()
        self._dirty: set[int] = set()
        self.before_write: Callable[[], None] | None = None

    def get(self, offset: int) -> T:
        table = self._tables.get(offset)
        if table is not None:
            self._tables.move_to_end(offset)
            return table
        if offset % self.cluster_size or offset <= 0:
            raise ImageError(f"{self.name} offset {offset:#x} is not aligned to a cluster")
        if offset + self.cluster_size > self._file_end():
            raise ImageError(f"{self.name} at offset {offset:#x} lies past the end of the file")
        table = self._load(fileio.pread_exact(self.fd, offset, self.cluster_size))
        self._insert(offset, table)
        return table

    def put(self, offset: int, table: T, dirty: bool = True) -> None:
        """Install a table made in memory (a new or copied one)."""
        self._insert(offset, table)
        if dirty:
            self._dirty.add(offset)

    def mark_dirty(self, offset: int) -> None:
        self._dirty.add(offset)

    def is_dirty(self) -> bool:
        return bool(self._dirty)

    def drop(self, offset: int) -> None:
        """Forget a table whose cluster was freed (its contents no longer matter)."""
        self._tables.pop(offset, None)
        self._dirty.discard(offset)

    def write_dirty(self) -> None:
        if not self._dirty:
            return
        if self.before_write is not None:
            self.before_write()
        for offset in sorted(self._dirty):
            fileio.pwrite_all(self.fd, self._dump(self._tables[offset]), offset)
        self._dirty.clear()

    def write_one(self, offset: int) -> None:
        if offset in self._dirty:
            fileio.pwrite_all(self.fd, self._dump(self._tables[offset]), offset)
            self._dirty.discard(offset)

    def clear(self) -> None:
        """Drop everything (after writing what is dirty)."""
        self.write_dirty()
        self._tables.clear()

    def _insert(self, offset: int, table: T) -> None:
        self._tables[offset] = table
        self._tables.move_to_end(offset)
        while len(self._tables) > self.capacity:
            victim = next(iter(self._tables))
            if victim in self._dirty:
                # Ordering hooks may flush other caches; write all dirty at once.
                self.write_dirty()
            self._tables.pop(victim, None)
