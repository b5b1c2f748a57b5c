"""Raw images (scatter/gather, holes) and size parsing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvmkit.block.create import create_image, parse_options
from kvmkit.block.image import Kind, open_image
from kvmkit.block.units import format_size, parse_size
from kvmkit.errors import ImageError


@pytest.mark.parametrize("text,value", [("10G", 10 << 30), ("512M", 512 << 20),
                                        ("1T", 1 << 40), ("4096", 4096), ("64k", 65536),
                                        ("1.5G", 3 << 29), ("2KiB", 2048)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(ImageError):
        parse_size("ten gigs")


def test_format_size_and_options() -> None:
    assert format_size(64 << 20) == "64 MiB"
    assert format_size(512) == "512 B"
    assert parse_options("cluster_size=4k,compat=0.10") == {"cluster_size": "4k",
                                                            "compat": "0.10"}


def test_raw_scatter_gather_and_holes(tmp_path: Path) -> None:
    path = tmp_path / "r.raw"
    create_image(str(path), "raw", 8 << 20)
    assert os.stat(path).st_blocks == 0
    with open_image(str(path)) as img:
        a, b = bytearray(b"A" * 5000), bytearray(b"B" * 7000)
        assert img.pwritev(4096, [memoryview(a), memoryview(b)]) == 12000
        x, y = bytearray(6000), bytearray(6000)
        assert img.preadv(4096, [memoryview(x), memoryview(y)]) == 12000
        assert bytes(x) == b"A" * 5000 + b"B" * 1000 and bytes(y) == b"B" * 6000
        img.pwrite(1 << 20, b"C" * (1 << 20))
        runs = img.layer_runs(0, img.size)
        assert any(r.kind is Kind.ZERO for r in runs) and any(r.kind is Kind.DATA for r in runs)
        before = os.stat(path).st_blocks
        img.discard(1 << 20, 1 << 20)
        assert os.stat(path).st_blocks < before
        assert img.pread(1 << 20, 10) == bytes(10)
        img.write_zeroes(4096, 100)
        assert img.pread(4096, 101) == bytes(100) + b"A"


def test_qcow2_preadv_pwritev_scatter(tmp_path: Path) -> None:
    path = tmp_path / "q.qcow2"
    create_image(str(path), "qcow2", 1 << 20, options={"cluster_size": "4k"})
    with open_image(str(path)) as img:
        bufs = [memoryview(bytearray([i + 1]) * 3000) for i in range(5)]
        img.pwritev(1000, bufs)
        out = [memoryview(bytearray(2500)) for _ in range(6)]
        assert img.preadv(1000, out) == 15000
        joined = b"".join(bytes(o) for o in out)
        assert joined == b"".join(bytes([i + 1]) * 3000 for i in range(5))
        with pytest.raises(ImageError, match="read-only"):
            with open_image(str(path), readonly=True) as ro:
                ro.pwrite(0, b"x")
