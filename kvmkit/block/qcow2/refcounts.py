"""Refcount table and blocks: who owns each host cluster, and allocation.

A refcount of 0 means free, 1 owned once, more means shared with a snapshot
(writes must copy first). New refcount blocks and a grown refcount table are
written before anything points to them, so a crash leaves at worst leaks.
"""

from __future__ import annotations

import sys
from array import array
from typing import Callable

from kvmkit.block import fileio
from kvmkit.block.qcow2.cache import TableCache
from kvmkit.errors import ImageError

OFFSET_MASK = 0x00FFFFFFFFFFFE00
_TYPECODES = {8: "B", 16: "H", 32: "I", 64: "Q"}
_SWAP = sys.byteorder == "little"


class RefcountBlock:
    """One refcount block, any width from 1 to 64 bits."""

    __slots__ = ("bits", "data")

    def __init__(self, raw: bytes, bits: int) -> None:
        self.bits = bits
        if bits >= 8:
            arr = array(_TYPECODES[bits])
            arr.frombytes(raw)
            if _SWAP and bits > 8:
                arr.byteswap()
            self.data: array | bytearray = arr
        else:
            self.data = bytearray(raw)

    def get(self, i: int) -> int:
        if self.bits >= 8:
            return self.data[i]
        bit = i * self.bits
        return (self.data[bit >> 3] >> (bit & 7)) & ((1 << self.bits) - 1)

    def set(self, i: int, value: int) -> None:
        if self.bits >= 8:
            self.data[i] = value
            return
        bit = i * self.bits
        mask = ((1 << self.bits) - 1) << (bit & 7)
        byte = self.data[bit >> 3]
        self.data[bit >> 3] = (byte & ~mask) | ((value << (bit & 7)) & mask)

    def tobytes(self) -> bytes:
        if self.bits > 8:
            arr = array(self.data.typecode, self.data)
            if _SWAP:
                arr.byteswap()
            return arr.tobytes()
        return bytes(self.data)


def load_u64_table(raw: bytes) -> array:
    arr = array("Q")
    arr.frombytes(raw)
    if _SWAP:
        arr.byteswap()
    return arr


def dump_u64_table(arr: array) -> bytes:
    out = array("Q", arr)
    if _SWAP:
        out.byteswap()
    return out.tobytes()


class Refcounts:
    """Reads, updates and allocates host clusters through the refcount structures.

    ``barrier`` makes earlier writes durable before later ones (fdatasync, or
    nothing in unsafe mode); ``set_table_location`` rewrites the header fields.
    """

    def __init__(self, fd: int, cluster_bits: int, refcount_bits: int, table_offset: int,
                 table_clusters: int, file_end: Callable[[], int],
                 barrier: Callable[[], None],
                 set_table_location: Callable[[int, int], None],
                 cache_tables: int = 64) -> None:
        self.fd = fd
        self.cluster_bits = cluster_bits
        self.cs = 1 << cluster_bits
        self.bits = refcount_bits
        self.max_refcount = (1 << refcount_bits) - 1
        self.per_block = self.cs * 8 // refcount_bits
        self.table_offset = table_offset
        self.table_clusters = table_clusters
        self.table = load_u64_table(fileio.pread_exact(fd, table_offset,
                                                       table_clusters * self.cs))
        self._file_end = file_end
        self._barrier = barrier
        self._set_table_location = set_table_location
        self.cache: TableCache[RefcountBlock] = TableCache(
            fd, self.cs, cache_tables, "refcount block",
            lambda raw: RefcountBlock(raw, refcount_bits), RefcountBlock.tobytes, file_end)
        self._hint = 1
        self._reserved: list[tuple[int, int]] = []
        #: Extra clusters to treat as used (check's repair passes the computed map).
        self.extra_used: Callable[[int], bool] | None = None

    # -- reading -------------------------------------------------------------------
    def _block(self, t: int) -> RefcountBlock | None:
        if t >= len(self.table):
            return None
        off = self.table[t] & OFFSET_MASK
        if not off:
            return None
        return self.cache.get(off)

    def get(self, cluster: int) -> int:
        blk = self._block(cluster // self.per_block)
        return 0 if blk is None else blk.get(cluster % self.per_block)

    def covered_clusters(self) -> int:
        return len(self.table) * self.per_block

    # -- updating ------------------------------------------------------------------
    def update(self, cluster: int, delta: int) -> int:
        t, i = divmod(cluster, self.per_block)
        self._ensure_block(t)
        off = self.table[t] & OFFSET_MASK
        blk = self.cache.get(off)
        value = blk.get(i) + delta
        if value < 0:
            raise ImageError(f"refcount of cluster {cluster} would drop below zero "
                             "(the image is corrupt; try 'kvmkit img check -r all')")
        if value > self.max_refcount:
            raise ImageError(f"refcount of cluster {cluster} would overflow "
                             f"{self.bits}-bit refcounts")
        blk.set(i, value)
        self.cache.mark_dirty(off)
        if value == 0 and cluster < self._hint:
            self._hint = cluster
        return value

    def set(self, cluster: int, value: int) -> None:
        self.update(cluster, value - self.get(cluster))

    def _is_free(self, c: int) -> bool:
        if self.get(c):
            return False
        for lo, hi in self._reserved:
            if lo <= c < hi:
                return False
        return not (self.extra_used and self.extra_used(c))

    def find_free(self, n: int, start: int | None = None) -> int:
        """First cluster index of a run of ``n`` free clusters (not marking them)."""
        if start is None:
            while not self._is_free(self._hint):   # keep the hint at the first free cluster
                self._hint += 1
            c = self._hint
        else:
            c = max(1, start)
        run = 0
        while run < n:
            if self._is_free(c + run):
                run += 1
            else:
                c += run + 1
                run = 0
        return c

    def allocate(self, n: int) -> int:
        """Allocate ``n`` contiguous clusters (refcount 1); returns the byte offset."""
        start = self.find_free(n)
        self._reserved.append((start, start + n))
        try:
            for c in range(start, start + n):
                self.update(c, 1)
        finally:
            self._reserved.remove((start, start + n))
        if start == self._hint:
            self._hint = start + n
        return start << self.cluster_bits

    def free(self, offset: int, nclusters: int = 1) -> list[int]:
        """Drop one reference from each cluster; returns the ones now free."""
        freed = []
        first = offset >> self.cluster_bits
        for c in range(first, first + nclusters):
            if self.update(c, -1) == 0:
                freed.append(c)
        return freed

    def write_dirty(self) -> None:
        self.cache.write_dirty()

    # -- new blocks, a bigger table ------------------------------------------------
    def _ensure_block(self, t: int) -> None:
        if t < len(self.table) and self.table[t] & OFFSET_MASK:
            return
        if t >= len(self.table):
            self._grow_table(t + 1)
            if self.table[t] & OFFSET_MASK:
                return
        c = self.find_free(1)
        self._reserved.append((c, c + 1))
        try:
            blk = RefcountBlock(bytes(self.cs), self.bits)
            if c // self.per_block == t:
                blk.set(c % self.per_block, 1)       # the block describes itself
            else:
                self.update(c, 1)
                self.cache.write_dirty()
                self._barrier()
            fileio.pwrite_all(self.fd, blk.tobytes(), c * self.cs)
            self._barrier()
            self.table[t] = c * self.cs
            fileio.pwrite_all(self.fd, (c * self.cs).to_bytes(8, "big"),
                              self.table_offset + 8 * t)
            self.cache.put(c * self.cs, blk, dirty=False)
        finally:
            self._reserved.remove((c, c + 1))

    def _grow_table(self, min_entries: int) -> None:
        per_cluster = self.cs // 8
        old = len(self.table)
        entries = max(min_entries, old * 2)
        while True:
            tc = -(-entries // per_cluster)
            nb = 0
            while True:
                s = self.find_free(tc + nb)
                t_hi = (s + tc + nb - 1) // self.per_block
                missing = [t for t in range(s // self.per_block, t_hi + 1)
                           if t >= old or not self.table[t] & OFFSET_MASK]
                if len(missing) <= nb:
                    break
                nb = len(missing)
            if t_hi < tc * per_cluster:
                break
            entries = t_hi + 1
        new_table = array("Q", self.table)
        new_table.extend([0] * (tc * per_cluster - old))
        new_blocks: dict[int, RefcountBlock] = {}
        for k, t in enumerate(missing):
            new_table[t] = (s + tc + k) * self.cs
            new_blocks[t] = RefcountBlock(bytes(self.cs), self.bits)
        used = list(range(s, s + tc + len(missing)))
        self._reserved.append((s, s + tc + nb))
        try:
            for c in used:
                t, i = divmod(c, self.per_block)
                if t in new_blocks:
                    new_blocks[t].set(i, 1)
                else:
                    self.update(c, 1)
            self.cache.write_dirty()
            for t, blk in new_blocks.items():
                fileio.pwrite_all(self.fd, blk.tobytes(), new_table[t])
            fileio.pwrite_all(self.fd, dump_u64_table(new_table), s * self.cs)
            self._barrier()
            self._set_table_location(s * self.cs, tc)
            self._barrier()
            old_off, old_clusters = self.table_offset, self.table_clusters
            self.table, self.table_offset, self.table_clusters = new_table, s * self.cs, tc
            for t, blk in new_blocks.items():
                self.cache.put(new_table[t], blk, dirty=False)
        finally:
            self._reserved.remove((s, s + tc + nb))
        self.free(old_off, old_clusters)
