"""qcow2 images: mapping guest clusters through L1/L2 to host clusters.

Write ordering (what makes a crash leave at worst leaked clusters):
new data clusters are written, then at flush the refcount blocks that count
them, a barrier, the L2 tables that point to them, a barrier, the L1 entries
that point to new L2 tables, a barrier, and only then are references that
were dropped (overwritten shared clusters, discards) subtracted. A dropped
cluster is therefore never reused while an on-disk table still points to it.
"""

from __future__ import annotations

import os
import zlib
from array import array
from typing import Sequence

from kvmkit.block import fileio
from kvmkit.block.image import BlockImage, Kind, LayerRun, check_image_size, iov_slices
from kvmkit.block.qcow2 import header as hdr
from kvmkit.block.qcow2.cache import TableCache
from kvmkit.block.qcow2.refcounts import Refcounts, dump_u64_table, load_u64_table
from kvmkit.block.qcow2.tables import (COMPRESSED as COMPRESSED_BIT, COPIED, OFFSET_MASK, ZERO_FLAG, CompressedCodec,
                                       check_host_offset, classify, new_table)
from kvmkit.errors import ImageError

#: Bytes of L2 tables kept in memory (QEMU's default on Linux is 32 MiB).
L2_CACHE_BYTES = 32 << 20
REFCOUNT_CACHE_BYTES = 4 << 20
ZLIB_WBITS = -12          # what QEMU uses to compress; any window decodes with -15


class Qcow2Image(BlockImage):
    format = "qcow2"

    def __init__(self, path: str, fd: int, readonly: bool, header: hdr.Qcow2Header,
                 unsafe: bool = False) -> None:
        super().__init__(path, fd, readonly)
        self.unsafe = unsafe
        self.header = header
        self.cluster_bits = header.cluster_bits
        self.cs = header.cluster_size
        self.l2_bits = self.cluster_bits - 3
        self.l2_entries = 1 << self.l2_bits
        self.codec = CompressedCodec(self.cluster_bits)
        raw_l1 = fileio.pread_exact(fd, header.l1_table_offset, header.l1_size * 8) \
            if header.l1_size else b""
        self.l1 = load_u64_table(raw_l1)
        self.l2cache: TableCache[array] = TableCache(
            fd, self.cs, L2_CACHE_BYTES // self.cs, "L2 table", load_u64_table,
            dump_u64_table, self._file_end)
        self.refs = Refcounts(fd, self.cluster_bits, header.refcount_bits,
                              header.refcount_table_offset, header.refcount_table_clusters,
                              self._file_end, self._barrier, self._set_reftable_location,
                              max(16, REFCOUNT_CACHE_BYTES // self.cs))
        self.l2cache.before_write = self._before_l2_write
        self._dirty_l1: set[int] = set()
        self._deferred_free: list[tuple[int, int]] = []
        self._compressed_next = 0
        self._last_decompressed: tuple[int, bytes] | None = None

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def open(cls, path: str, readonly: bool = False, unsafe: bool = False,
             allow_corrupt: bool = False) -> Qcow2Image:
        """Open one layer (no backing file); ``allow_corrupt`` is for repair only."""
        try:
            fd = os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC)
        except OSError as exc:
            raise ImageError(f"could not open {path!r}: {exc.strerror}") from None
        try:
            size = os.fstat(fd).st_size
            header = hdr.Qcow2Header.parse(fileio.pread_exact(fd, 0, min(size, 1 << 21)),
                                           size, path)
            cls._check_features(header, readonly or allow_corrupt, path)
            img = cls(path, fd, readonly, header, unsafe)
        except BaseException:
            os.close(fd)
            raise
        try:
            img._validate_l1()
            if not readonly:
                img._open_for_write()
        except BaseException:
            img.readonly = True
            img.close()
            raise
        return img

    @staticmethod
    def _check_features(h: hdr.Qcow2Header, readonly: bool, path: str) -> None:
        incompat = h.incompatible_features
        if incompat & hdr.INCOMPAT_EXTL2:
            raise ImageError(f"{path}: images with extended L2 entries (subclusters) are "
                             "not supported; convert it with 'qemu-img convert -O qcow2'")
        if incompat & hdr.INCOMPAT_DATA_FILE:
            raise ImageError(f"{path}: images with an external data file are not supported")
        if incompat & hdr.INCOMPAT_COMPRESSION and h.compression_type != 0:
            raise ImageError(f"{path}: compression type {h.compression_type} (zstd) is not "
                             "supported, only zlib")
        known = hdr.INCOMPAT_DIRTY | hdr.INCOMPAT_CORRUPT | hdr.INCOMPAT_COMPRESSION
        unknown = incompat & ~known
        if unknown:
            names = ", ".join(h.feature_name(0, b) for b in range(64) if unknown >> b & 1)
            raise ImageError(f"{path}: unsupported incompatible qcow2 features: {names}; "
                             "refusing to open it")
        if not readonly and incompat & hdr.INCOMPAT_CORRUPT:
            raise ImageError(f"{path}: the image is marked corrupt; it can only be opened "
                             "read-only (or repaired with 'kvmkit img check -r all')")

    def _validate_l1(self) -> None:
        end = self._file_end()
        for i, e in enumerate(self.l1):
            off = e & OFFSET_MASK
            if off:
                check_host_offset(off, self.cs, f"L1 entry {i}")
                if off + self.cs > end:
                    raise ImageError(f"{self.path}: L1 entry {i} points to an L2 table at "
                                     f"{off:#x}, past the end of the file ({end:#x})")

    def _open_for_write(self) -> None:
        h = self.header
        if h.incompatible_features & hdr.INCOMPAT_DIRTY:
            from kvmkit.block.qcow2.check import check_image
            check_image(self, repair=True)
        changes: dict[str, object] = {}
        if h.autoclear_features:
            changes["autoclear_features"] = 0   # we do not keep bitmaps up to date
        if h.compatible_features & hdr.COMPAT_LAZY_REFCOUNTS and h.version >= 3:
            changes["incompatible_features"] = self.header.incompatible_features \
                | hdr.INCOMPAT_DIRTY
        if changes:
            self.write_header(self.header.with_(**changes))

    def _close_format(self) -> None:
        if not self.readonly and self.header.incompatible_features & hdr.INCOMPAT_DIRTY:
            self.write_header(self.header.with_(
                incompatible_features=self.header.incompatible_features & ~hdr.INCOMPAT_DIRTY))
            self._barrier()

    # -- creating ---------------------------------------------------------------------
    @classmethod
    def create(cls, path: str, size: int, *, cluster_size: int = 65536, version: int = 3,
               backing_file: str | None = None, backing_format: str | None = None,
               lazy_refcounts: bool = False, refcount_bits: int = 16) -> None:
        """Write an empty image: header, one refcount table and block, then the L1."""
        bits = cluster_size.bit_length() - 1
        if cluster_size != 1 << bits or not 9 <= bits <= 21:
            raise ImageError(f"cluster size {cluster_size} must be a power of two "
                             "between 512 and 2M")
        order = refcount_bits.bit_length() - 1
        if refcount_bits != 1 << order or order > 6:
            raise ImageError(f"refcount width {refcount_bits} must be a power of two up to 64")
        if version == 2 and (order != 4 or lazy_refcounts):
            raise ImageError("compat=0.10 images support only 16-bit refcounts and no "
                             "lazy refcounts")
        check_image_size(size)
        h = hdr.Qcow2Header(version=version, cluster_bits=bits, size=0, l1_size=0,
                            l1_table_offset=0, refcount_table_offset=cluster_size,
                            refcount_table_clusters=1, refcount_order=order,
                            header_length=112 if version >= 3 else 72,
                            compatible_features=hdr.COMPAT_LAZY_REFCOUNTS if lazy_refcounts
                            else 0, backing_file=backing_file, backing_format=backing_format)
        first = h.pack()
        block = bytearray(cluster_size)
        for c in range(3):          # header, refcount table, refcount block
            bit = c * refcount_bits
            if refcount_bits >= 8:
                w = refcount_bits // 8
                block[c * w:(c + 1) * w] = (1).to_bytes(w, "big")
            else:
                block[bit >> 3] |= 1 << (bit & 7)
        table = (2 * cluster_size).to_bytes(8, "big").ljust(cluster_size, b"\0")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise ImageError(f"could not create {path!r}: {exc.strerror}") from None
        try:
            fileio.pwrite_all(fd, first.ljust(cluster_size, b"\0") + table + bytes(block), 0)
        finally:
            os.close(fd)
        with cls.open(path, unsafe=True) as img:    # a new file: no barriers needed
            img.resize(size)

    # -- small helpers ------------------------------------------------------------------
    @property
    def size(self) -> int:
        return self.header.size

    @property
    def cluster_size(self) -> int:
        return self.cs

    @property
    def backing_filename(self) -> str | None:
        return self.header.backing_file

    @property
    def backing_format(self) -> str | None:
        return self.header.backing_format

    def _file_end(self) -> int:
        return os.fstat(self.fd).st_size

    def _barrier(self) -> None:
        self._fdatasync()

    def write_header(self, new: hdr.Qcow2Header) -> None:
        """Rewrite the header cluster (one write of the packed header)."""
        fileio.pwrite_all(self.fd, new.pack(), 0)
        self.header = new

    def _set_reftable_location(self, offset: int, clusters: int) -> None:
        self.write_header(self.header.with_(refcount_table_offset=offset,
                                            refcount_table_clusters=clusters))

    def _before_l2_write(self) -> None:
        self.refs.write_dirty()
        self._barrier()

    def _metadata_ranges(self) -> list[tuple[int, int]]:
        h = self.header
        return [(0, self.cs), (h.l1_table_offset, h.l1_size * 8),
                (self.refs.table_offset, self.refs.table_clusters * self.cs)]

    def _check_data_cluster(self, host: int, guest: int) -> None:
        """Refuse to write guest data over the header or top-level tables."""
        for start, length in self._metadata_ranges():
            if start <= host < start + max(length, 1):
                raise ImageError(f"{self.path}: guest offset {guest:#x} maps onto image "
                                 f"metadata at {host:#x} (the image is corrupt)")
        if host >= self._file_end():
            raise ImageError(f"{self.path}: guest offset {guest:#x} maps to {host:#x}, past "
                             "the end of the file (the image is corrupt)")

    # -- reading ------------------------------------------------------------------------
    def _l2_for_read(self, l1_index: int) -> array | None:
        off = self.l1[l1_index] & OFFSET_MASK
        return self.l2cache.get(off) if off else None

    def layer_runs(self, offset: int, length: int) -> list[LayerRun]:
        runs: list[LayerRun] = []
        end = offset + length
        cb, cs, version = self.cluster_bits, self.cs, self.header.version
        span = 1 << (cb + self.l2_bits)
        with self.lock:
            pos = offset
            while pos < end:
                l1i = pos >> (cb + self.l2_bits)
                chunk_end = min(end, (l1i + 1) * span)
                l2 = self._l2_for_read(l1i)
                if l2 is None:
                    _append(runs, LayerRun(pos, chunk_end - pos, Kind.UNALLOCATED))
                    pos = chunk_end
                    continue
                first = (pos >> cb) & (self.l2_entries - 1)
                last = ((chunk_end - 1) >> cb) & (self.l2_entries - 1)
                self._scan_l2(l2, first, last, pos, chunk_end, runs)
                pos = chunk_end
        return runs

    def _scan_l2(self, l2: array, first: int, last: int, pos: int, end: int,
                 runs: list[LayerRun]) -> None:
        """Turn L2 entries [first, last] into merged runs (the hot loop of map/read)."""
        cb, cs = self.cluster_bits, self.cs
        zero_bit = ZERO_FLAG if self.header.version >= 3 else 0
        DATA, ZERO, UNALLOC, COMPRESSED = (Kind.DATA, Kind.ZERO, Kind.UNALLOCATED,
                                           Kind.COMPRESSED)
        run_kind: Kind | None = None
        run_start = run_host = 0
        for i in range(first, last + 1):
            entry = l2[i]
            n = min(end, ((pos >> cb) + 1) << cb) - pos
            host = entry & OFFSET_MASK           # classify(), inlined: this loop is hot
            if entry & COMPRESSED_BIT:
                kind = COMPRESSED
            elif entry & zero_bit:
                kind = ZERO
            elif host:
                kind = DATA
            else:
                kind = UNALLOC
            if kind is DATA:
                if host & (cs - 1):
                    check_host_offset(host, cs, f"L2 entry for guest offset {pos:#x}")
                host += pos & (cs - 1)
                if run_kind is Kind.DATA and run_host + (pos - run_start) == host:
                    pos += n
                    continue
            elif kind is run_kind and kind is not COMPRESSED:
                pos += n
                continue
            if run_kind is not None:
                _append(runs, LayerRun(run_start, pos - run_start, run_kind,
                                       run_host if run_kind is Kind.DATA else None))
            if kind is COMPRESSED:
                runs.append(LayerRun(pos, n, kind, None, entry))
                run_kind = None
            else:
                run_kind, run_start, run_host = kind, pos, host
            pos += n
        if run_kind is not None:
            _append(runs, LayerRun(run_start, pos - run_start, run_kind,
                                   run_host if run_kind is Kind.DATA else None))

    def preadv(self, offset: int, buffers: Sequence[memoryview]) -> int:
        # Fast path for the VMM's common case: one buffer inside one plain data
        # cluster is a single table lookup and a single preadv.
        if len(buffers) == 1:
            view = buffers[0]
            n = view.nbytes
            cs = self.cs
            if offset >= 0 and (offset & (cs - 1)) + n <= cs and offset + n <= self.size:
                with self.lock:
                    l2off = self.l1[offset >> (self.cluster_bits + self.l2_bits)] & OFFSET_MASK
                    entry = self.l2cache.get(l2off)[(offset >> self.cluster_bits)
                                                    & (self.l2_entries - 1)] if l2off else 0
                host = entry & OFFSET_MASK
                if host and not entry & (COMPRESSED_BIT | ZERO_FLAG) and not host & (cs - 1) \
                        and view.format == "B" and view.ndim == 1 and self.direct is None:
                    if os.preadv(self.fd, [view], host + (offset & (cs - 1))) == n:
                        return n
        return super().preadv(offset, buffers)

    def _read_layer_run(self, run: LayerRun, skip: int, views: list[memoryview]) -> None:
        if run.kind is Kind.DATA:
            assert run.host_offset is not None
            self._data_preadv(views, run.host_offset + skip)
            return
        cluster = self._decompress(run.descriptor)
        pos = (run.start & (self.cs - 1)) + skip
        for v in views:
            v[:] = cluster[pos:pos + len(v)]
            pos += len(v)

    def _decompress(self, entry: int) -> bytes:
        cached = self._last_decompressed
        if cached is not None and cached[0] == entry:
            return cached[1]
        host, length = self.codec.decode(entry)
        raw = fileio.pread_exact(self.fd, host, length)
        try:
            out = zlib.decompressobj(-15).decompress(raw, self.cs)
        except zlib.error as exc:
            raise ImageError(f"{self.path}: compressed cluster at {host:#x} is corrupt "
                             f"({exc})") from None
        if len(out) < self.cs:
            out += bytes(self.cs - len(out))
        self._last_decompressed = (entry, out)
        return out

    # -- writing ------------------------------------------------------------------------
    def _pwritev(self, offset: int, buffers: Sequence[memoryview]) -> int:
        self.check_writable()
        views, total = self.request(offset, buffers)
        in_place: list[tuple[int, int, int]] = []
        with self.lock:
            self._write_locked(offset, total, views, in_place)
        for skip, n, host in in_place:
            self._data_pwritev(iov_slices(views, skip, n), host)
        return total

    def copy_from_fd(self, offset: int, length: int, src_fd: int, src_offset: int) -> None:
        """Write ``length`` bytes of another file at guest ``offset``, copied inside the
        kernel (convert's fast path: no trip through Python buffers)."""
        self.check_writable()
        self.check_range(offset, length)
        in_place: list[tuple[int, int, int]] = []
        with self.lock:
            self._write_locked(offset, length, (src_fd, src_offset), in_place)
        for skip, n, host in in_place:
            fileio.copy_range(src_fd, src_offset + skip, self.fd, host, n)

    def _release(self, entry: int) -> None:
        """Drop this table's reference to what ``entry`` points at (applied at flush)."""
        kind, host = classify(entry, self.header.version)
        if kind is Kind.COMPRESSED:
            for c in self.codec.clusters(entry):
                self._deferred_free.append((c << self.cluster_bits, 1))
        elif host:
            self._deferred_free.append((host, 1))

    def _owned(self, l2off: int, l2: array, i: int, guest: int) -> int:
        """Host offset if guest cluster ``i`` can be written in place, else 0."""
        entry = l2[i]
        kind, host = classify(entry, self.header.version)
        if kind is not Kind.DATA:
            return 0
        check_host_offset(host, self.cs, f"L2 entry for guest offset {guest:#x}")
        if not entry & COPIED:
            if self.refs.get(host >> self.cluster_bits) != 1:
                return 0
            l2[i] = entry | COPIED          # the flag was stale: repair it
            self.l2cache.mark_dirty(l2off)
        self._check_data_cluster(host, guest)
        return host

    def _writable_l2(self, l1i: int) -> tuple[int, array]:
        """The L2 table for ``l1i``, allocated or copied so this image owns it alone."""
        entry = self.l1[l1i]
        off = entry & OFFSET_MASK
        if off and (entry & COPIED or self.refs.get(off >> self.cluster_bits) == 1):
            if not entry & COPIED:
                self.l1[l1i] = entry | COPIED
                self._dirty_l1.add(l1i)
            return off, self.l2cache.get(off)
        new_off = self.refs.allocate(1)
        if off:                                   # shared with a snapshot: copy it
            table = array("Q", (e & ~COPIED for e in self.l2cache.get(off)))
            self._deferred_free.append((off, 1))
        else:
            table = new_table(self.l2_entries)
        self.l2cache.put(new_off, table)
        self.l1[l1i] = new_off | COPIED
        self._dirty_l1.add(l1i)
        return new_off, table

    def _write_locked(self, offset: int, total: int,
                      source: list[memoryview] | tuple[int, int],
                      in_place: list[tuple[int, int, int]]) -> None:
        """Allocate what needs it and write the data of new clusters (under the lock);
        collect (skip, length, host) for in-place writes the caller does unlocked.
        ``source`` is a scatter list, or (fd, offset) of a file to copy from."""
        cb, cs = self.cluster_bits, self.cs
        end = offset + total
        span = 1 << (cb + self.l2_bits)
        pos = offset
        while pos < end:
            l1i = pos >> (cb + self.l2_bits)
            chunk_end = min(end, (l1i + 1) * span)
            l2off, l2 = self._writable_l2(l1i)
            dirty = False
            while pos < chunk_end:
                i = (pos >> cb) & (self.l2_entries - 1)
                host = self._owned(l2off, l2, i, pos)
                if host:
                    n = min(chunk_end, ((pos >> cb) + 1) << cb) - pos
                    _append_seg(in_place, pos - offset, n, host + (pos & (cs - 1)))
                    pos += n
                    continue
                # a run of clusters that need new host clusters
                j = i + 1
                last = (chunk_end - 1) >> cb & (self.l2_entries - 1)
                while j <= last and not self._owned(l2off, l2, j, pos):
                    j += 1
                run_end = min(chunk_end, ((pos >> cb) + j - i) << cb)
                first_cluster = (pos >> cb) << cb
                new_host = self.refs.allocate(j - i)
                head = self._old_bytes(first_cluster, pos - first_cluster)
                tail_end = min(self.size, -(-run_end // cs) * cs)
                tail = self._old_bytes(run_end, tail_end - run_end)
                try:
                    if isinstance(source, list):
                        parts = [memoryview(head)] + \
                            iov_slices(source, pos - offset, run_end - pos) + [memoryview(tail)]
                        self._data_pwritev([p for p in parts if len(p)], new_host)
                    else:
                        fileio.pwrite_all(self.fd, head, new_host)
                        fileio.copy_range(source[0], source[1] + pos - offset, self.fd,
                                          new_host + len(head), run_end - pos)
                        fileio.pwrite_all(self.fd, tail, new_host + len(head) + run_end - pos)
                except OSError:
                    # ENOSPC, EIO: no L2 entry points at the new clusters yet; give them
                    # back, so a guest retrying a full disk does not leak one run per try
                    self.refs.free(new_host, j - i)
                    raise
                for k in range(j - i):
                    self._release(l2[i + k])
                    l2[i + k] = (new_host + k * cs) | COPIED
                dirty = True
                pos = run_end
            if dirty:
                self.l2cache.mark_dirty(l2off)

    def _old_bytes(self, guest: int, length: int) -> bytes:
        """Current contents of a guest range (for copy-on-write of a partial cluster)."""
        return self.pread(guest, length) if length > 0 else b""

    def write_compressed(self, offset: int, data: bytes) -> None:
        """Store one whole guest cluster compressed (``convert -c``); falls back to a
        plain write when compression does not save a sector."""
        self.check_writable()
        if offset & (self.cs - 1) or len(data) != min(self.cs, self.size - offset):
            raise ImageError("compressed writes must cover exactly one cluster")
        c = zlib.compressobj(6, zlib.DEFLATED, ZLIB_WBITS)
        blob = c.compress(data) + c.flush()
        if len(blob) >= self.cs - 512:
            self._pwritev(offset, [memoryview(data)])
            return
        with self.lock:
            nxt = self._compressed_next
            if nxt and self.cs - (nxt & (self.cs - 1)) >= len(blob):
                host = nxt
                self.refs.update(host >> self.cluster_bits, 1)
            else:
                host = self.refs.allocate(-(-len(blob) // self.cs))
            fileio.pwrite_all(self.fd, blob, host)
            nxt = (host + len(blob) + 511) & ~511
            self._compressed_next = 0 if nxt & (self.cs - 1) == 0 else nxt
            l1i = offset >> (self.cluster_bits + self.l2_bits)
            l2off, l2 = self._writable_l2(l1i)
            i = (offset >> self.cluster_bits) & (self.l2_entries - 1)
            self._release(l2[i])
            l2[i] = self.codec.encode(host, len(blob))
            self.l2cache.mark_dirty(l2off)

    def _set_entries(self, offset: int, length: int, value: int) -> None:
        """Point whole clusters in [offset, offset+length) at ``value`` (0 or ZERO_FLAG)."""
        cb = self.cluster_bits
        with self.lock:
            pos = offset
            end = offset + length
            while pos < end:
                l1i = pos >> (cb + self.l2_bits)
                chunk_end = min(end, (l1i + 1) << (cb + self.l2_bits))
                if value == 0 and not self.l1[l1i] & OFFSET_MASK:
                    pos = chunk_end
                    continue
                l2off, l2 = self._writable_l2(l1i)
                for i in range((pos >> cb) & (self.l2_entries - 1),
                               ((chunk_end - 1) >> cb & (self.l2_entries - 1)) + 1):
                    if l2[i] != value:
                        self._release(l2[i])
                        l2[i] = value
                self.l2cache.mark_dirty(l2off)
                pos = chunk_end

    def _whole_clusters(self, offset: int, length: int) -> tuple[int, int]:
        start = -(-offset // self.cs) * self.cs
        end = (offset + length) // self.cs * self.cs
        if offset + length == self.size:
            end = offset + length if start < offset + length else end
        return start, max(start, end)

    def _discard(self, offset: int, length: int) -> None:
        self.check_writable()
        self.check_range(offset, length)
        start, end = self._whole_clusters(offset, length)
        if end <= start:
            return
        if self.backing is None:
            self._set_entries(start, end - start, 0)
        elif self.header.version >= 3:
            self._set_entries(start, end - start, ZERO_FLAG)

    def _write_zeroes(self, offset: int, length: int) -> None:
        self.check_writable()
        self.check_range(offset, length)
        start, end = self._whole_clusters(offset, length)
        if end <= start:
            start = end = offset + length
        if offset < start:
            self._pwritev(offset, [memoryview(bytes(start - offset))])
        if end < offset + length:
            self._pwritev(end, [memoryview(bytes(offset + length - end))])
        if end > start:
            if self.header.version >= 3:
                self._set_entries(start, end - start, ZERO_FLAG)
            elif self.backing is None:
                self._set_entries(start, end - start, 0)
            else:
                for p in range(start, end, 1 << 20):
                    self._pwritev(p, [memoryview(bytes(min(1 << 20, end - p)))])

    def make_empty(self) -> None:
        """Drop every cluster (reads fall through to the backing file): after commit."""
        self.check_writable()
        self._set_entries(0, self.size, 0)
        self.flush()

    # -- flushing -----------------------------------------------------------------------
    def flush(self) -> None:
        if self.readonly:
            return
        with self.lock:
            self.flush_metadata()
            self._barrier()

    def flush_metadata(self) -> None:
        """Write metadata in crash-safe order (see the module docstring)."""
        self.refs.write_dirty()
        if self.l2cache.is_dirty() or self._dirty_l1:
            self._barrier()
            self.l2cache.write_dirty()
        if self._dirty_l1:
            self._barrier()
            self.write_l1(sorted(self._dirty_l1))
            self._dirty_l1.clear()
        if self._deferred_free:
            self._barrier()
            frees, self._deferred_free = self._deferred_free, []
            for host, n in frees:
                for c in self.refs.free(host, n):
                    off = c << self.cluster_bits
                    self.l2cache.drop(off)
                    self.refs.cache.drop(off)
                    fileio.punch_hole(self.fd, off, self.cs)
                    if self._compressed_next >> self.cluster_bits == c:
                        self._compressed_next = 0
            self.refs.write_dirty()

    def write_l1(self, indices: list[int]) -> None:
        base = self.header.l1_table_offset
        if len(indices) > 64:
            fileio.pwrite_all(self.fd, dump_u64_table(self.l1), base)
            return
        for i in indices:
            fileio.pwrite_all(self.fd, self.l1[i].to_bytes(8, "big"), base + 8 * i)

    # -- size -------------------------------------------------------------------------
    def resize(self, new_size: int, shrink: bool = False) -> None:
        self.check_writable()
        check_image_size(new_size)
        with self.lock:
            if new_size < self.size:
                if not shrink:
                    raise ImageError("use --shrink to shrink an image "
                                     "(data past the new end is lost)")
                start = -(-new_size // self.cs) * self.cs
                if start < self.size:
                    self._set_entries(start, self.size - start, 0)
                if new_size % self.cs:     # keep the tail of a cut cluster reading zeros
                    tail = start - new_size
                    self.pwrite(new_size, bytes(min(tail, self.size - new_size)))
            needed = -(-new_size // (self.cs * self.l2_entries))
            if needed > len(self.l1):
                self._grow_l1(needed)
            self.flush_metadata()
            self._barrier()
            self.write_header(self.header.with_(size=new_size))
            self._barrier()

    def _grow_l1(self, entries: int) -> None:
        if entries * 8 > hdr.MAX_L1_BYTES:
            raise ImageError("image too large for this cluster size (L1 table over 32 MiB)")
        self.flush_metadata()
        clusters = -(-entries * 8 // self.cs)
        new_l1 = array("Q", self.l1)
        new_l1.extend([0] * (entries - len(self.l1)))
        new_off = self.refs.allocate(clusters)
        fileio.pwrite_all(self.fd, dump_u64_table(new_l1).ljust(clusters * self.cs, b"\0"),
                          new_off)
        self.refs.write_dirty()
        self._barrier()
        old_off, old_size = self.header.l1_table_offset, self.header.l1_size
        self.write_header(self.header.with_(l1_table_offset=new_off, l1_size=entries))
        self._barrier()
        self.l1 = new_l1
        if old_size:
            self.refs.free(old_off, -(-old_size * 8 // self.cs))
            self.refs.write_dirty()


def _append(runs: list[LayerRun], run: LayerRun) -> None:
    """Append, merging with the previous run when contiguous in guest and host."""
    if runs:
        prev = runs[-1]
        if prev.kind is run.kind and prev.kind is not Kind.COMPRESSED \
                and prev.start + prev.length == run.start:
            if prev.host_offset is None and run.host_offset is None:
                runs[-1] = LayerRun(prev.start, prev.length + run.length, prev.kind)
                return
            if prev.host_offset is not None and run.host_offset is not None \
                    and prev.host_offset + prev.length == run.host_offset:
                runs[-1] = LayerRun(prev.start, prev.length + run.length, prev.kind,
                                    prev.host_offset)
                return
    runs.append(run)


def _append_seg(segs: list[tuple[int, int, int]], skip: int, n: int, host: int) -> None:
    if segs:
        s, m, h = segs[-1]
        if s + m == skip and h + m == host:
            segs[-1] = (s, m + n, h)
            return
    segs.append((skip, n, host))


