"""Whole-image copies: convert, commit and rebase's data movement.

Copies walk the source's map so holes and zero clusters cost nothing, move
data in large chunks through one reusable buffer, and skip chunks that turn
out to be all zeros so the target stays sparse. Plain (uncompressed) data
goes file-to-file with ``copy_file_range``, never through Python buffers; the
price is that zero blocks inside allocated data are copied, not skipped.
"""

from __future__ import annotations

from typing import Callable

from kvmkit.block import fileio
from kvmkit.block.image import BlockImage, Kind
from kvmkit.block.raw import RawImage
from kvmkit.errors import ImageError

CHUNK = 4 << 20
_ZEROS = bytes(CHUNK)

Progress = Callable[[int], None]


def _zero(view: memoryview) -> bool:
    return view == _ZEROS[:len(view)]


def copy_image(src: BlockImage, dst: BlockImage, *, compress: bool = False,
               progress: Progress | None = None) -> None:
    """Copy the guest-visible contents of ``src`` (whole chain) into an empty ``dst``."""
    if dst.size < src.size:
        raise ImageError(f"target is smaller than the source ({dst.size} < {src.size})")
    layers = list(src.chain())
    direct = isinstance(dst, RawImage) and not compress
    gran = dst.cluster_size if compress else max(4096, dst.cluster_size)
    buf = bytearray(CHUNK)
    for ext in src.map():
        if not ext.data:
            if progress:
                progress(ext.length)
            continue
        layer = layers[ext.depth]
        if ext.offset is not None and not ext.compressed and not compress:
            # plain bytes in a host file: copy them kernel-side, in pieces for progress
            for pos in range(0, ext.length, CHUNK * 16):
                n = min(CHUNK * 16, ext.length - pos)
                if direct:
                    fileio.copy_range(layer.fd, ext.offset + pos, dst.fd, ext.start + pos, n)
                else:
                    dst.copy_from_fd(ext.start + pos, n, layer.fd, ext.offset + pos)
                if progress:
                    progress(n)
            continue
        pos, end = ext.start, ext.start + ext.length
        while pos < end:
            # chunks aligned to the target's clusters, so zero skipping and
            # compression see whole clusters
            n = min(end, (pos // gran + 1) * gran + CHUNK - gran) - pos
            view = memoryview(buf)[:n]
            src.preadv(pos, [view])
            if compress:
                _write_compressed(dst, pos, view)
            elif not _zero(view):
                _write_nonzero(dst, pos, view, gran)
            if progress:
                progress(n)
            pos += n


def _write_nonzero(dst: BlockImage, pos: int, view: memoryview, gran: int) -> None:
    """Write ``view`` at ``pos`` except for aligned all-zero granules."""
    start = 0
    run_start = -1
    n = len(view)
    while start < n:
        step = min(n, (pos + start) // gran * gran + gran - pos) - start
        piece = view[start:start + step]
        if _zero(piece):
            if run_start >= 0:
                dst.pwrite(pos + run_start, view[run_start:start])
                run_start = -1
        elif run_start < 0:
            run_start = start
        start += step
    if run_start >= 0:
        dst.pwrite(pos + run_start, view[run_start:])


def _write_compressed(dst: BlockImage, pos: int, view: memoryview) -> None:
    write = getattr(dst, "write_compressed", None)
    if write is None:
        raise ImageError(f"the {dst.format} format does not support compression")
    cs = dst.cluster_size
    off = 0
    while off < len(view):
        n = min(len(view) - off, cs - (pos + off) % cs)
        piece = view[off:off + n]
        if not _zero(piece):
            if n == cs or pos + off + n == dst.size:
                write(pos + off, bytes(piece))
            else:
                dst.pwrite(pos + off, piece)
        off += n


def commit_into_backing(top: BlockImage, base: BlockImage,
                        progress: Progress | None = None) -> None:
    """Write everything ``top`` itself holds into ``base`` (its backing image)."""
    if base.size < top.size:
        base.resize(top.size)
    buf = bytearray(CHUNK)
    for run in top.layer_runs(0, top.size):
        if run.kind is Kind.UNALLOCATED:
            pass
        elif run.kind is Kind.ZERO:
            base.write_zeroes(run.start, run.length)
        else:
            pos, end = run.start, run.start + run.length
            while pos < end:
                n = min(CHUNK, end - pos)
                view = memoryview(buf)[:n]
                top.preadv(pos, [view])
                base.pwrite(pos, view)
                pos += n
        if progress:
            progress(run.length)
    base.flush()


def rebase_data(img: BlockImage, old: BlockImage | None, new: BlockImage | None,
                progress: Progress | None = None) -> None:
    """Copy into ``img`` every range it does not hold where old and new backing differ."""
    step = img.cluster_size
    for run in img.layer_runs(0, img.size):
        if run.kind is not Kind.UNALLOCATED:
            if progress:
                progress(run.length)
            continue
        pos, end = run.start, run.start + run.length
        while pos < end:
            n = min(end - pos, CHUNK - CHUNK % step)
            old_data = _read_or_zero(old, pos, n)
            new_data = _read_or_zero(new, pos, n)
            if old_data != new_data:
                for off in range(0, n, step):
                    a = old_data[off:off + step]
                    if a != new_data[off:off + step]:
                        img.pwrite(pos + off, a)
            if progress:
                progress(n)
            pos += n


def _read_or_zero(img: BlockImage | None, offset: int, length: int) -> bytes:
    if img is None or offset >= img.size:
        return bytes(length)
    inside = min(length, img.size - offset)
    data = img.pread(offset, inside)
    return data + bytes(length - inside)
