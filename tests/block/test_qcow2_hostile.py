"""Malformed and hostile images: a clear ImageError, no hang, no stray write."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from kvmkit.block.create import create_image
from kvmkit.block.image import open_image
from kvmkit.block.qcow2 import header as hdr
from kvmkit.block.qcow2 import snapshots as snap
from kvmkit.block.qcow2.image import Qcow2Image
from kvmkit.errors import ImageError

CS = 65536


def _patch(path: Path, offset: int, fmt: str, *values: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(struct.pack(fmt, *values))


def _read(path: Path, offset: int, fmt: str) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "h.qcow2"
    create_image(str(path), "qcow2", 4 << 20)
    with open_image(str(path)) as img:
        img.pwrite(0, b"\x11" * 100000)
    return path


def _l1_offset(path: Path) -> int:
    return _read(path, 40, ">Q")


def _l2_offset(path: Path) -> int:
    return _read(path, _l1_offset(path), ">Q") & 0x00FFFFFFFFFFFE00


@pytest.mark.parametrize("field,fmt,value,words", [
    (40, ">Q", 1 << 40, "outside the file"),            # L1 table past EOF
    (40, ">Q", CS + 8, "not aligned"),                  # L1 table unaligned
    (36, ">I", 0x7FFFFFFF, "too large"),                # huge l1_size
    (48, ">Q", 1 << 40, "outside the file"),            # refcount table past EOF
    (56, ">I", 0xFFFFFF, "invalid"),                    # huge refcount table
    (20, ">I", 30, "cluster size"),                     # cluster_bits out of range
    (4, ">I", 4, "version"),
    (96, ">I", 7, "refcount order"),
    (100, ">I", 999999, "header length"),
    (24, ">Q", 1 << 63, "too large"),                   # virtual size
])
def test_bad_header_fields(image: Path, field: int, fmt: str, value: int, words: str) -> None:
    _patch(image, field, fmt, value)
    with pytest.raises(ImageError, match=words):
        open_image(str(image), readonly=True)


def test_truncated_file(tmp_path: Path, image: Path) -> None:
    short = tmp_path / "short.qcow2"
    short.write_bytes(image.read_bytes()[:50])
    with pytest.raises(ImageError, match="too short"):
        open_image(str(short), "qcow2", readonly=True)


def test_l2_past_eof_and_unaligned(image: Path) -> None:
    _patch(image, _l1_offset(image), ">Q", (1 << 40) | (1 << 63))
    with pytest.raises(ImageError, match="past the end"):
        open_image(str(image), readonly=True)
    _patch(image, _l1_offset(image), ">Q", 3 * CS + 512)
    with pytest.raises(ImageError, match="not aligned"):
        open_image(str(image), readonly=True)


def test_data_cluster_unaligned_or_on_metadata(image: Path) -> None:
    l2 = _l2_offset(image)
    _patch(image, l2, ">Q", (1 << 63) | (CS * 5 + 512))
    with open_image(str(image), readonly=True) as img:
        with pytest.raises(ImageError, match="not aligned"):
            img.pread(0, 10)
    _patch(image, l2, ">Q", (1 << 63) | CS)          # points at the refcount table
    size = os.path.getsize(image)
    with open_image(str(image)) as img:
        with pytest.raises(ImageError, match="metadata"):
            img.pwrite(0, b"evil")
    assert os.path.getsize(image) == size
    _patch(image, l2, ">Q", (1 << 63) | (1 << 45))   # far past the end of the file
    with open_image(str(image)) as img:
        assert img.pread(0, 4) == bytes(4)
        with pytest.raises(ImageError, match="past the end"):
            img.pwrite(0, b"evil")
    assert os.path.getsize(image) == size


def test_refcount_block_past_eof_refuses_writes(image: Path) -> None:
    rt = _read(image, 48, ">Q")
    _patch(image, rt, ">Q", 1 << 40)
    size = os.path.getsize(image)
    with pytest.raises(ImageError):
        with open_image(str(image)) as img:
            img.pwrite(3 << 20, b"x" * 4096)
    assert os.path.getsize(image) == size


def test_refcount_overflow(image: Path) -> None:
    with Qcow2Image.open(str(image)) as img:
        host = img.l2cache.get(img.l1[0] & 0x00FFFFFFFFFFFE00)[0] & 0x00FFFFFFFFFFFE00
        img.refs.set(host // CS, 0xFFFF)
        img.flush()
        with pytest.raises(ImageError, match="overflow"):
            snap.create_snapshot(img, "s")


def test_snapshot_table_garbage(image: Path) -> None:
    _patch(image, 60, ">IQ", 5, 1 << 40)
    with Qcow2Image.open(str(image), readonly=True) as img:
        assert img.pread(0, 2) == b"\x11\x11"          # data still readable
        with pytest.raises(ImageError, match="snapshot table"):
            snap.read_snapshots(img)
    _patch(image, 60, ">IQ", 1, 2 * CS)               # the refcount block: garbage
    with Qcow2Image.open(str(image), readonly=True) as img:
        with pytest.raises(ImageError):
            snap.read_snapshots(img)


def test_unknown_incompatible_bits_named(image: Path) -> None:
    _patch(image, 72, ">Q", 1 << 9)
    with pytest.raises(ImageError, match="bit 9"):
        open_image(str(image))
    _patch(image, 72, ">Q", hdr.INCOMPAT_EXTL2)
    with pytest.raises(ImageError, match="extended L2"):
        open_image(str(image), readonly=True)


def test_corrupt_bit_allows_read_only(image: Path) -> None:
    _patch(image, 72, ">Q", hdr.INCOMPAT_CORRUPT)
    with open_image(str(image), readonly=True) as img:
        assert img.pread(0, 1) == b"\x11"
    with pytest.raises(ImageError, match="corrupt"):
        open_image(str(image))


def test_backing_loops(tmp_path: Path) -> None:
    a, b = tmp_path / "a.qcow2", tmp_path / "b.qcow2"
    create_image(str(b), "qcow2", 1 << 20)
    create_image(str(a), "qcow2", None, backing="b.qcow2", backing_fmt="qcow2")
    with Qcow2Image.open(str(b)) as img:         # close the loop: b -> a
        img.write_header(img.header.with_(backing_file="a.qcow2", backing_format="qcow2"))
    with pytest.raises(ImageError, match="loop"):
        open_image(str(a), readonly=True)
    with Qcow2Image.open(str(b)) as img:         # b -> b
        img.write_header(img.header.with_(backing_file="./b.qcow2"))
    with pytest.raises(ImageError, match="loop"):
        open_image(str(b), readonly=True)


def test_backing_file_outside_root(tmp_path: Path) -> None:
    (tmp_path / "vm").mkdir()
    secret = tmp_path / "secret.raw"
    secret.write_bytes(b"s" * 4096)
    img = tmp_path / "vm" / "disk.qcow2"
    create_image(str(img), "qcow2", None, backing="../secret.raw", backing_fmt="raw")
    with pytest.raises(ImageError, match="outside"):
        open_image(str(img), readonly=True, backing_root=str(tmp_path / "vm"))
    with open_image(str(img), readonly=True) as ok:
        assert ok.pread(0, 1) == b"s"


def test_corrupt_compressed_cluster(image: Path) -> None:
    l2 = _l2_offset(image)
    codec_shift = 62 - (16 - 8)
    _patch(image, l2, ">Q", (1 << 62) | (0 << codec_shift) | (5 * CS))
    with open(image, "r+b") as f:
        f.seek(5 * CS)
        f.write(b"\xff" * 512)
    with open_image(str(image), readonly=True) as img:
        with pytest.raises(ImageError, match="compressed"):
            img.pread(0, 10)


def test_header_extension_overrun(image: Path) -> None:
    _patch(image, 112, ">II", 0x12345678, 0x7FFFFFFF)
    with pytest.raises(ImageError, match="extension"):
        open_image(str(image), readonly=True)


def test_requests_outside_the_image(image: Path) -> None:
    with open_image(str(image)) as img:
        with pytest.raises(ImageError, match="outside"):
            img.pread(img.size - 1, 2)
        with pytest.raises(ImageError, match="outside"):
            img.pwrite(-1, b"x")
