"""Random read/write/discard/zero workloads checked against a raw shadow copy."""

from __future__ import annotations

import os
import tempfile
import threading

from hypothesis import HealthCheck, given, settings, strategies as st

from kvmkit.block.create import create_image
from kvmkit.block.image import open_image
from kvmkit.block.qcow2 import snapshots as snap
from kvmkit.block.qcow2.check import check_image

SIZE = 1 << 20

ops = st.lists(st.tuples(
    st.sampled_from(["write", "write", "write", "read", "discard", "zero", "flush"]),
    st.integers(0, SIZE - 1), st.integers(1, 150_000), st.integers(1, 255)),
    min_size=1, max_size=25)


def _run(ops_list, fmt: str, options: dict[str, str], backing: bool, qemu=None) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "img")
        shadow = bytearray(SIZE)
        base = None
        if backing:
            base = os.path.join(d, "base.raw")
            shadow[:] = bytes(range(256)) * (SIZE // 256)
            with open(base, "wb") as f:
                f.write(shadow)
            create_image(path, "qcow2", None, backing="base.raw", backing_fmt="raw",
                         options=options)
        else:
            create_image(path, fmt, SIZE, options=options)
        with open_image(path) as img:
            for op, off, length, byte in ops_list:
                length = min(length, SIZE - off)
                if op == "write":
                    img.pwrite(off, bytes([byte]) * length)
                    shadow[off:off + length] = bytes([byte]) * length
                elif op == "read":
                    assert img.pread(off, length) == shadow[off:off + length]
                elif op == "zero":
                    img.write_zeroes(off, length)
                    shadow[off:off + length] = bytes(length)
                elif op == "discard":
                    img.discard(off, length)
                    # raw punches exactly the range; qcow2 drops whole clusters
                    # (reading zeros, v2 with a backing file keeps them)
                    if fmt == "raw":
                        shadow[off:off + length] = bytes(length)
                    elif not (backing and options.get("compat") == "0.10"):
                        cs = img.cluster_size
                        start, end = -(-off // cs) * cs, (off + length) // cs * cs
                        if off + length == SIZE:
                            end = SIZE
                        if end > start:
                            shadow[start:end] = bytes(end - start)
                else:
                    img.flush()
            assert img.pread(0, SIZE) == shadow
            if fmt == "qcow2":
                assert check_image(img).exit_code == 0
        with open_image(path, readonly=True) as img:
            assert img.pread(0, SIZE) == shadow


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, cluster=st.sampled_from(["4k", "64k"]), compat=st.sampled_from(["1.1", "0.10"]))
def test_qcow2_random_io_matches_shadow(ops, cluster: str, compat: str) -> None:
    _run(ops, "qcow2", {"cluster_size": cluster, "compat": compat}, backing=False)


@settings(max_examples=15, deadline=None)
@given(ops=ops)
def test_qcow2_with_backing_random_io_matches_shadow(ops) -> None:
    _run(ops, "qcow2", {"cluster_size": "4k"}, backing=True)


@settings(max_examples=10, deadline=None)
@given(ops=ops)
def test_raw_random_io_matches_shadow(ops) -> None:
    _run(ops, "raw", {}, backing=False)


@settings(max_examples=10, deadline=None)
@given(before=ops, after=ops)
def test_snapshot_preserves_contents_across_writes(before, after) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.qcow2")
        create_image(path, "qcow2", SIZE, options={"cluster_size": "4k"})
        with open_image(path) as img:
            for _, off, length, byte in before:
                img.pwrite(off, bytes([byte]) * min(length, SIZE - off))
            saved = img.pread(0, SIZE)
            snap.create_snapshot(img, "s")
            for _, off, length, byte in after:
                img.pwrite(off, bytes([byte ^ 0xFF]) * min(length, SIZE - off))
            img.flush()
            assert check_image(img).exit_code == 0
            snap.apply_snapshot(img, "s")
            assert img.pread(0, SIZE) == saved
            snap.delete_snapshot(img, "s")
            assert check_image(img).exit_code == 0


def test_threads_write_disjoint_ranges(tmp_path) -> None:
    path = str(tmp_path / "t.qcow2")
    create_image(path, "qcow2", 8 << 20, options={"cluster_size": "4k"})
    with open_image(path) as img:
        def worker(k: int) -> None:
            for i in range(40):
                off = (k * 40 + i) * 12288 + 100
                img.pwrite(off, bytes([k + 1]) * 9000)
                assert img.pread(off, 9000) == bytes([k + 1]) * 9000
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        img.flush()
        assert check_image(img).exit_code == 0
        for k in range(4):
            for i in range(40):
                off = (k * 40 + i) * 12288 + 100
                assert img.pread(off, 9000) == bytes([k + 1]) * 9000
