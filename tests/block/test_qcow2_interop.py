"""Both directions against real qemu-img / qemu-io."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kvmkit.block.convert import copy_image
from kvmkit.block.create import create_image
from kvmkit.block.image import Kind, open_image
from kvmkit.block.qcow2 import snapshots as snap
from kvmkit.block.qcow2.check import check_image
from kvmkit.block.qcow2.image import Qcow2Image

MiB = 1 << 20


@pytest.mark.parametrize("cluster,compat", [(4096, "1.1"), (65536, "1.1"), (65536, "0.10"),
                                            (2 << 20, "1.1"), (512, "1.1")])
def test_reads_qemu_written_data(qemu, tmp_path: Path, cluster: int, compat: str) -> None:
    img = tmp_path / "q.qcow2"
    qemu.img("create", "-f", "qcow2", "-o", f"cluster_size={cluster},compat={compat}",
             img, "16M")
    cmds = ["write -P 0xab 0 64k", "write -P 0x5a 1000 3000", "write -P 0x11 5M 1M",
            "write -c -P 0x77 8M " + str(max(cluster, 4096))]
    if compat == "1.1":
        cmds.append("write -z 5M 64k")
    qemu.io(img, *cmds)
    with open_image(str(img), readonly=True) as im:
        assert im.size == 16 * MiB
        head = im.pread(0, 64 * 1024)
        assert head[:1000] == b"\xab" * 1000
        assert head[1000:4000] == b"\x5a" * 3000
        assert head[4000:] == b"\xab" * (64 * 1024 - 4000)
        block = im.pread(5 * MiB, MiB)
        if compat == "1.1":
            assert block[:65536] == bytes(65536)
            assert block[65536:] == b"\x11" * (MiB - 65536)
        else:
            assert block == b"\x11" * MiB
        assert im.pread(8 * MiB, 4096) == b"\x77" * 4096
        assert im.pread(12 * MiB, 4096) == bytes(4096)
        assert check_image(im).exit_code == 0


def test_kvmkit_written_image_passes_qemu(qemu, tmp_path: Path) -> None:
    img = tmp_path / "k.qcow2"
    create_image(str(img), "qcow2", 32 * MiB, options={"cluster_size": "4k"})
    with open_image(str(img)) as im:
        im.pwrite(0, b"\x01" * 10000)
        im.pwrite(3 * MiB + 17, b"\x02" * 200000)
        im.pwrite(31 * MiB, b"\x03" * MiB)
        im.write_zeroes(3 * MiB, 8192)
        im.discard(31 * MiB, 65536)
    qemu.assert_clean(img)
    qemu.io(img, "read -P 1 0 10000", "read -P 0 3M 8192", "read -P 2 3153937 180000",
            "read -P 0 31M 64k", "read -P 3 31808k 960k")


def test_backing_chain_reads_through_and_writes_only_top(qemu, tmp_path: Path) -> None:
    base, mid, top = tmp_path / "base.raw", tmp_path / "mid.qcow2", tmp_path / "top.qcow2"
    qemu.img("create", "-f", "raw", base, "8M")
    qemu.io(base, "write -P 0xa1 0 8M", fmt="raw")
    qemu.img("create", "-f", "qcow2", "-b", "base.raw", "-F", "raw", mid)
    qemu.io(mid, "write -P 0xb2 1M 1M")
    create_image(str(top), "qcow2", None, backing="mid.qcow2", backing_fmt="qcow2")
    with open_image(str(top)) as im:
        assert [type(x).__name__ for x in im.chain()] == ["Qcow2Image", "Qcow2Image",
                                                         "RawImage"]
        assert im.pread(0, 4) == b"\xa1" * 4
        assert im.pread(MiB, 4) == b"\xb2" * 4
        im.pwrite(MiB + 100, b"\xc3" * 50)        # partial cluster: copy-on-write
    qemu.assert_clean(top)
    qemu.io(top, "read -P 0xb2 1M 100", "read -P 0xc3 1048676 50",
            "read -P 0xb2 1048726 65386", "read -P 0xa1 0 1M")
    qemu.io(mid, "read -P 0xb2 1M 1M")      # the backing file did not change
    assert os.path.getsize(top) < 2 * MiB


def test_short_backing_file_reads_zero_past_its_end(qemu, tmp_path: Path) -> None:
    base, top = tmp_path / "b.qcow2", tmp_path / "t.qcow2"
    qemu.img("create", "-f", "qcow2", base, "1M")
    qemu.io(base, "write -P 0x66 0 1M")
    qemu.img("create", "-f", "qcow2", "-b", base, "-F", "qcow2", top, "4M")
    with open_image(str(top), readonly=True) as im:
        data = im.pread(MiB - 10, 20)
        assert data == b"\x66" * 10 + bytes(10)


def test_snapshots_both_ways(qemu, tmp_path: Path) -> None:
    img = tmp_path / "s.qcow2"
    qemu.img("create", "-f", "qcow2", img, "4M")
    qemu.io(img, "write -P 0x01 0 128k")
    qemu.img("snapshot", "-c", "by-qemu", img)
    qemu.io(img, "write -P 0x02 0 64k")
    with Qcow2Image.open(str(img)) as im:
        assert [s.name for s in snap.read_snapshots(im)] == ["by-qemu"]
        snap.create_snapshot(im, "by-kvmkit")
        im.pwrite(65536, b"\x03" * 65536)
    qemu.assert_clean(img)
    listing = qemu.img("snapshot", "-l", img).stdout
    assert "by-qemu" in listing and "by-kvmkit" in listing
    qemu.img("snapshot", "-a", "by-kvmkit", img)
    qemu.io(img, "read -P 2 0 64k", "read -P 1 64k 64k")
    with Qcow2Image.open(str(img)) as im:
        snap.apply_snapshot(im, "by-qemu")
        assert im.pread(0, 131072) == b"\x01" * 131072
        snap.delete_snapshot(im, "by-kvmkit")
    qemu.assert_clean(img)
    qemu.img("snapshot", "-d", "by-qemu", img)
    qemu.assert_clean(img)
    with Qcow2Image.open(str(img)) as im:
        assert snap.read_snapshots(im) == []
        assert check_image(im).exit_code == 0


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_convert_round_trip_is_byte_identical(qemu, tmp_path: Path, fmt: str) -> None:
    src = tmp_path / "src.qcow2"
    qemu.img("create", "-f", "qcow2", src, "16M")
    qemu.io(src, "write -P 0x42 0 100k", "write -P 0x43 7M 3M", "write -c -P 0x44 12M 64k")
    mid, back = tmp_path / f"mid.{fmt}", tmp_path / "back.qcow2"
    with open_image(str(src), readonly=True) as s:
        create_image(str(mid), fmt, s.size)
        with open_image(str(mid), fmt, unsafe=True) as d:
            copy_image(s, d)
    qemu.assert_same(src, mid)
    with open_image(str(mid), fmt, readonly=True) as s:
        create_image(str(back), "qcow2", s.size)
        with open_image(str(back)) as d:
            copy_image(s, d, compress=True)
    qemu.assert_same(src, back)
    qemu.assert_clean(back)
    a, b = tmp_path / "a.raw", tmp_path / "b.raw"
    qemu.img("convert", "-O", "raw", src, a)
    qemu.img("convert", "-O", "raw", back, b)
    assert a.read_bytes() == b.read_bytes()


def test_compressed_clusters_written_by_kvmkit_read_by_qemu(qemu, tmp_path: Path) -> None:
    raw, out = tmp_path / "in.raw", tmp_path / "out.qcow2"
    data = (b"kvmkit compresses this " * 5000)[:100000]
    raw.write_bytes(data.ljust(4 * MiB, b"\0"))
    with open_image(str(raw), readonly=True) as s:
        create_image(str(out), "qcow2", s.size, options={"cluster_size": "4k"})
        with open_image(str(out)) as d:
            copy_image(s, d, compress=True)
    result = json.loads(qemu.img("check", "--output", "json", out).stdout)
    assert result["compressed-clusters"] > 0
    qemu.assert_same(out, raw)
    with open_image(str(out), readonly=True) as im:
        assert any(r.kind is Kind.COMPRESSED for r in im.layer_runs(0, im.size))


def test_lazy_refcounts_dirty_bit(qemu, tmp_path: Path) -> None:
    img = tmp_path / "lazy.qcow2"
    create_image(str(img), "qcow2", 4 * MiB, options={"lazy_refcounts": "on"})
    im = open_image(str(img))
    im.pwrite(0, b"x" * 70000)
    im.flush()
    info = json.loads(qemu.img("info", "-U", "--output", "json", img).stdout)
    assert info["dirty-flag"] is True            # open for writing: marked dirty
    im.close()
    info = json.loads(qemu.img("info", "--output", "json", img).stdout)
    assert info["dirty-flag"] is False
    assert info["format-specific"]["data"]["lazy-refcounts"] is True
    qemu.assert_clean(img)


def test_resize_grow_and_shrink(qemu, tmp_path: Path) -> None:
    img = tmp_path / "r.qcow2"
    create_image(str(img), "qcow2", MiB, options={"cluster_size": "4k"})
    with open_image(str(img)) as im:
        im.pwrite(0, b"\x09" * MiB)
        im.resize(64 * MiB)                     # needs a bigger L1 table
        im.pwrite(63 * MiB, b"\x08" * 4096)
    qemu.assert_clean(img)
    qemu.io(img, "read -P 9 0 1M", "read -P 0 1M 62M", "read -P 8 63M 4k")
    with open_image(str(img)) as im:
        im.resize(512 * 1024 + 100, shrink=True)
        assert im.size == 512 * 1024 + 100
        im.resize(MiB)
        assert im.pread(512 * 1024, 200) == b"\x09" * 100 + bytes(100)
    qemu.assert_clean(img)


def test_refcount_table_growth(qemu, tmp_path: Path) -> None:
    """512-byte clusters: one refcount block covers 128 KiB, so writes need many."""
    img = tmp_path / "small.qcow2"
    create_image(str(img), "qcow2", 8 * MiB, options={"cluster_size": "512"})
    with open_image(str(img)) as im:
        for i in range(0, 8 * MiB, 256 * 1024):
            im.pwrite(i, bytes([i >> 18 & 0xFF or 1]) * 700)
    qemu.assert_clean(img)
    with open_image(str(img), readonly=True) as im:
        assert im.pread(256 * 1024, 700) == b"\x01" * 700


@pytest.mark.parametrize("bits", [1, 8, 64])
def test_other_refcount_widths(qemu, tmp_path: Path, bits: int) -> None:
    img = tmp_path / "w.qcow2"
    qemu.img("create", "-f", "qcow2", "-o", f"refcount_bits={bits}", img, "4M")
    qemu.io(img, "write -P 0x31 0 100k")
    with open_image(str(img)) as im:
        assert im.pread(0, 4) == b"1111"
        im.pwrite(2 * MiB, b"\x32" * 70000)
    qemu.assert_clean(img)
    qemu.io(img, "read -P 0x32 2M 70000", "read -P 0x31 0 100k")
