"""The disk image API every format implements, and ``open_image`` for chains.

A :class:`BlockImage` is a flat array of bytes of ``size`` length. Formats
implement one primitive for reads (``_layer_status`` plus host reads) and one
for writes; the base class turns those into the public calls the VMM and the
``img`` CLI use, and owns the backing-chain fall-through so that every format
reads through its backing file the same way.
"""

from __future__ import annotations

import enum
import os
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Sequence

from kvmkit.errors import ImageError

if TYPE_CHECKING:
    from kvmkit.block.cachemode import CacheMode
    from kvmkit.block.directio import DirectIO

#: Longest backing chain we follow; deeper than this is almost surely a loop
#: through paths that resolve differently, or a hostile image.
MAX_CHAIN_DEPTH = 64

QCOW2_MAGIC = b"QFI\xfb"

#: Largest virtual size kvmkit creates or resizes to (4 EiB): qcow2's L1
#: arithmetic and the host's off_t both stay in range below it.
MAX_IMAGE_SIZE = 1 << 62


def check_image_size(size: int) -> int:
    """``size`` if it is a size an image can have, else an :class:`ImageError`
    (not the OverflowError ``ftruncate`` would raise)."""
    if not 0 <= size <= MAX_IMAGE_SIZE:
        raise ImageError(f"invalid image size {size}: must be between 0 and {MAX_IMAGE_SIZE} (4 EiB)")
    return size


class Kind(enum.Enum):
    """What a byte range of one layer holds."""

    DATA = "data"              # stored bytes at a host offset
    ZERO = "zero"              # reads as zeros, no fall-through to the backing file
    UNALLOCATED = "unalloc"    # not in this layer: read the backing file (or zeros)
    COMPRESSED = "compressed"  # stored compressed (qcow2): data, no usable host offset


@dataclass(frozen=True)
class LayerRun:
    """A run of guest bytes with one :class:`Kind` in a single layer."""

    start: int
    length: int
    kind: Kind
    host_offset: int | None = None
    descriptor: int = 0        # format-specific (qcow2: the compressed L2 entry)


@dataclass(frozen=True)
class Extent:
    """A run of the whole chain, as ``qemu-img map`` reports it."""

    start: int
    length: int
    depth: int
    present: bool
    zero: bool
    data: bool
    offset: int | None
    filename: str
    compressed: bool = False


def iov_slices(buffers: Sequence[memoryview], skip: int, length: int) -> list[memoryview]:
    """The sub-views of ``buffers`` covering bytes [skip, skip+length)."""
    out: list[memoryview] = []
    for buf in buffers:
        n = len(buf)
        if skip >= n:
            skip -= n
            continue
        take = min(n - skip, length)
        out.append(buf[skip:skip + take])
        length -= take
        skip = 0
        if length == 0:
            break
    return out


def as_byte_views(buffers: Sequence[memoryview | bytes | bytearray]) -> list[memoryview]:
    """Normalise buffers to flat unsigned-byte memoryviews."""
    return [memoryview(b).cast("B") if memoryview(b).format != "B" or memoryview(b).ndim != 1
            else memoryview(b) for b in buffers]


class BlockImage:
    """An open disk image (one layer, plus its ``backing`` image if any).

    Thread-safe: ``self.lock`` guards metadata; formats may do data I/O for
    already-allocated ranges outside it so that an I/O thread pool scales.
    """

    format: str = "?"

    def __init__(self, path: str, fd: int, readonly: bool) -> None:
        self.path = path
        self.fd = fd
        self.readonly = readonly
        self.backing: BlockImage | None = None
        self.unsafe = False          # True: flush() skips fsync (qemu's cache=unsafe)
        self.writethrough = False    # True: every write is flushed before it returns
        self.direct: DirectIO | None = None   # O_DIRECT for guest data (cache=none/directsync)
        self.cache_mode = "writeback"
        self.sync_count = 0          # fdatasync calls issued (what a flush cost the host)
        self.lock = threading.RLock()
        self._closed = False

    def set_cache_mode(self, mode: str | CacheMode) -> None:
        """Apply a QEMU cache mode (see :mod:`kvmkit.block.cachemode`) to this
        layer; O_DIRECT is opened here, so a file system without it fails now,
        with the reason, rather than at the first guest write."""
        from kvmkit.block.cachemode import parse_cache_mode
        m = parse_cache_mode(mode)
        if m.direct and self.direct is None:
            from kvmkit.block.directio import DirectIO
            self.direct = DirectIO(self.path, self.readonly)
        elif not m.direct and self.direct is not None:
            self.direct.close()
            self.direct = None
        self.unsafe = m.ignore_flush
        self.writethrough = m.writethrough
        self.cache_mode = m.name

    # -- what formats implement -------------------------------------------------
    @property
    def size(self) -> int:
        raise NotImplementedError

    @property
    def cluster_size(self) -> int:
        """Allocation granularity (for alignment of copies and zero detection)."""
        return 65536

    def layer_runs(self, offset: int, length: int) -> list[LayerRun]:
        """Runs of this layer covering [offset, offset+length), in order."""
        raise NotImplementedError

    def _read_layer_run(self, run: LayerRun, skip: int, views: list[memoryview]) -> None:
        """Fill ``views`` from a DATA or COMPRESSED run starting ``skip`` bytes in."""
        raise NotImplementedError

    def _pwritev(self, offset: int, buffers: Sequence[memoryview]) -> int:
        """Write a scatter list at guest ``offset`` (the format's primitive)."""
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def _discard(self, offset: int, length: int) -> None:
        raise NotImplementedError

    def _write_zeroes(self, offset: int, length: int) -> None:
        raise NotImplementedError

    def resize(self, new_size: int, shrink: bool = False) -> None:
        raise NotImplementedError

    @property
    def backing_filename(self) -> str | None:
        return None

    @property
    def backing_format(self) -> str | None:
        return None

    def actual_size(self) -> int:
        """Bytes the file occupies on the host (``qemu-img info``'s disk size)."""
        return os.fstat(self.fd).st_blocks * 512

    # -- the public API -------------------------------------------------------------
    def check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ImageError(f"{self.path}: request [{offset}, +{length}) is outside "
                             f"the image (size {self.size})")

    def check_writable(self) -> None:
        if self.readonly:
            raise ImageError(f"{self.path}: image is open read-only")
        if self._closed:
            raise ImageError(f"{self.path}: image is closed")

    def request(self, offset: int, buffers: Sequence[memoryview]
                ) -> tuple[list[memoryview], int]:
        """Byte views of a scatter list and its total length, range-checked."""
        views = as_byte_views(buffers)
        total = sum(len(v) for v in views)
        self.check_range(offset, total)
        return views, total

    def pread(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.preadv(offset, [memoryview(buf)])
        return bytes(buf)

    def preadv(self, offset: int, buffers: Sequence[memoryview]) -> int:
        """Read into ``buffers`` (scatter list) from guest ``offset``; returns bytes read."""
        views, total = self.request(offset, buffers)
        pos = 0
        for run in self.layer_runs(offset, total):
            part = iov_slices(views, pos, run.length)
            if run.kind is Kind.DATA or run.kind is Kind.COMPRESSED:
                self._read_layer_run(run, 0, part)
            elif run.kind is Kind.UNALLOCATED and self.backing is not None \
                    and run.start < self.backing.size:
                inside = min(run.length, self.backing.size - run.start)
                self.backing.preadv(run.start, iov_slices(part, 0, inside))
                for v in iov_slices(part, inside, run.length - inside):
                    v[:] = bytes(len(v))
            else:
                for v in part:
                    v[:] = bytes(len(v))
            pos += run.length
        return total

    def pwrite(self, offset: int, data: bytes | bytearray | memoryview) -> int:
        return self.pwritev(offset, [memoryview(data)])

    # Writes: the format's primitive, then the cache mode's promise.
    def pwritev(self, offset: int, buffers: Sequence[memoryview]) -> int:
        """Write ``buffers`` (scatter list) at guest ``offset``; returns bytes written.
        In writethrough mode the data is durable when this returns."""
        n = self._pwritev(offset, buffers)
        self._written()
        return n

    def discard(self, offset: int, length: int) -> None:
        self._discard(offset, length)
        self._written()

    def write_zeroes(self, offset: int, length: int) -> None:
        self._write_zeroes(offset, length)
        self._written()

    def _written(self) -> None:
        if self.writethrough:
            self.flush()

    # Guest data on the host: through O_DIRECT when the cache mode asks for it.
    def _data_preadv(self, views: list[memoryview], host_offset: int) -> None:
        from kvmkit.block import fileio
        if self.direct is not None:
            self.direct.preadv(views, host_offset)
        else:
            fileio.preadv_full(self.fd, views, host_offset)

    def _data_pwritev(self, views: list[memoryview], host_offset: int) -> None:
        from kvmkit.block import fileio
        if self.direct is not None:
            self.direct.pwritev(views, host_offset)
        else:
            fileio.pwritev_full(self.fd, views, host_offset)

    def _fdatasync(self) -> None:
        """The one place a flush reaches the host's disk (cache=unsafe: nowhere)."""
        if not self.unsafe:
            os.fdatasync(self.fd)
            self.sync_count += 1

    def copy_from_fd(self, offset: int, length: int, src_fd: int, src_offset: int) -> None:
        """Write bytes of another file at guest ``offset`` (formats may copy kernel-side)."""
        from kvmkit.block import fileio
        pos = 0
        while pos < length:
            n = min(8 << 20, length - pos)
            self.pwrite(offset + pos, fileio.pread_exact(src_fd, src_offset + pos, n))
            pos += n

    def chain(self) -> Iterator[BlockImage]:
        """This image then each backing image, top to bottom."""
        img: BlockImage | None = self
        while img is not None:
            yield img
            img = img.backing

    def map(self, offset: int = 0, length: int | None = None) -> Iterator[Extent]:
        """The chain's extents, merged, like ``qemu-img map --output json``."""
        if length is None:
            length = self.size - offset
        pending: Extent | None = None
        for ext in self._map_layer(offset, length, 0):
            if pending is not None and _mergeable(pending, ext):
                pending = Extent(pending.start, pending.length + ext.length, pending.depth,
                                 pending.present, pending.zero, pending.data, pending.offset,
                                 pending.filename, pending.compressed)
                continue
            if pending is not None:
                yield pending
            pending = ext
        if pending is not None:
            yield pending

    def _map_layer(self, offset: int, length: int, depth: int) -> Iterator[Extent]:
        for run in self.layer_runs(offset, length):
            if run.kind is Kind.UNALLOCATED:
                b = self.backing
                if b is not None and run.start < b.size:
                    inside = min(run.length, b.size - run.start)
                    yield from b._map_layer(run.start, inside, depth + 1)
                    if inside < run.length:
                        yield Extent(run.start + inside, run.length - inside, depth, False,
                                     True, False, None, self.path)
                else:
                    yield Extent(run.start, run.length, depth, False, True, False, None,
                                 self.path)
            elif run.kind is Kind.ZERO:
                yield Extent(run.start, run.length, depth, True, True, False, None, self.path)
            else:
                yield Extent(run.start, run.length, depth, True, False, True, run.host_offset,
                             self.path, run.kind is Kind.COMPRESSED)

    def close(self) -> None:
        if self._closed:
            return
        try:
            if not self.readonly:
                self.flush()
            self._close_format()
        finally:
            self._closed = True
            os.close(self.fd)
            if self.direct is not None:
                self.direct.close()
                self.direct = None
            if self.backing is not None:
                self.backing.close()

    def _close_format(self) -> None:
        """Format-specific work on close (e.g. clearing a dirty bit)."""

    def __enter__(self) -> BlockImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path!r} size={self.size}>"


def _mergeable(a: Extent, b: Extent) -> bool:
    if a.start + a.length != b.start or a.filename != b.filename:
        return False
    if (a.depth, a.present, a.zero, a.data, a.compressed) != \
            (b.depth, b.present, b.zero, b.data, b.compressed):
        return False
    if a.offset is None or b.offset is None:
        return a.offset is None and b.offset is None
    return a.offset + a.length == b.offset


def probe_format(path: str) -> str:
    """``qcow2`` if the file starts with the qcow2 magic, else ``raw``."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ImageError(f"could not open {path!r}: {exc.strerror}") from None
    return "qcow2" if magic == QCOW2_MAGIC else "raw"


def resolve_backing_path(image_path: str, backing: str) -> str:
    """A relative backing name is relative to the directory of the image naming it."""
    if os.path.isabs(backing):
        return backing
    return os.path.join(os.path.dirname(os.path.abspath(image_path)), backing)


def open_image(path: str, format: str | None = None, readonly: bool = False, *,
               backing: bool = True, unsafe: bool = False, backing_root: str | None = None,
               cache: str | CacheMode | None = None,
               _seen: frozenset[str] = frozenset()) -> BlockImage:
    """Open ``path`` (probing the format unless given) and its backing chain.

    Backing images are always opened read-only. A chain that revisits a file
    (by device and inode, so symlinks and ``..`` cannot hide it) is refused.
    ``unsafe`` skips fsync barriers (for a target a crash would discard anyway,
    like qemu-img convert's default cache=unsafe). ``cache`` is a QEMU cache
    mode (``none``, ``writeback``, ``writethrough``, ``directsync``,
    ``unsafe``) applied to the whole chain; ``unsafe=True`` is ``cache="unsafe"``. ``backing_root`` confines
    backing files to one directory tree: an untrusted image naming
    ``/etc/shadow`` as its backing file would otherwise expose that file.
    """
    from kvmkit.block.raw import RawImage
    from kvmkit.block.qcow2.image import Qcow2Image

    fmt = format or probe_format(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ImageError(f"could not open {path!r}: {exc.strerror}") from None
    ident = f"{st.st_dev}:{st.st_ino}"
    if ident in _seen:
        raise ImageError(f"backing chain loop: {path!r} is its own backing file "
                         "(directly or through other images)")
    if len(_seen) >= MAX_CHAIN_DEPTH:
        raise ImageError(f"backing chain deeper than {MAX_CHAIN_DEPTH} images at {path!r}")
    if fmt == "raw":
        img: BlockImage = RawImage.open(path, readonly)
        img.unsafe = unsafe
    elif fmt == "qcow2":
        img = Qcow2Image.open(path, readonly, unsafe)
    else:
        raise ImageError(f"unknown image format {fmt!r} (supported: raw, qcow2)")
    try:
        if cache is not None:
            img.set_cache_mode(cache)
        name = img.backing_filename
        if backing and name:
            bpath = resolve_backing_path(path, name)
            bfmt = img.backing_format
            if bfmt is not None and bfmt not in ("raw", "qcow2"):
                raise ImageError(f"{path}: backing file format {bfmt!r} is not supported")
            if backing_root is not None:
                root = os.path.realpath(backing_root)
                if os.path.commonpath([root, os.path.realpath(bpath)]) != root:
                    raise ImageError(f"{path}: backing file {name!r} is outside {root!r}; "
                                     "refusing to open it")
            if not os.path.exists(bpath):
                raise ImageError(f"{path}: backing file {bpath!r} does not exist")
            img.backing = open_image(bpath, bfmt, readonly=True, unsafe=unsafe,
                                     backing_root=backing_root, cache=cache, _seen=_seen | {ident})
    except BaseException:
        img.close()
        raise
    return img
