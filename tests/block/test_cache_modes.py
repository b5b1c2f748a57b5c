"""QEMU's cache modes on kvmkit's images, checked against what the host
kernel says about the file's pages.

``cachestat(2)`` (Linux 6.5+, :func:`kvmkit.block.fileio.cachestat`) tells how many of a file's pages are in the
page cache and how many are dirty: so "writethrough data is on disk when the
write returns" is a number (0 dirty pages), as is "O_DIRECT kept the data
out of the page cache" (0 cached pages), and the writeback runs show the
same measurement does see dirty pages when they are there.
"""

from __future__ import annotations

import mmap
import os
import random
import subprocess
import sys
import tempfile

import pytest

from kvmkit.block import fileio
from kvmkit.block.cachemode import MODES, parse_cache_mode
from kvmkit.block.directio import DirectIO
from kvmkit.block.image import open_image
from kvmkit.errors import ConfigError, ImageError

SIZE = 8 << 20


def cachestat(path: str, offset: int = 0, length: int = 0):
    """Pages of ``path`` in [offset, +length) that are cached / dirty."""
    fd = os.open(path, os.O_RDONLY)
    try:
        st = fileio.cachestat(fd, offset, length)
    finally:
        os.close(fd)
    if st is None:
        pytest.skip("cachestat(2) needs Linux 6.5")
    return st


def evict(path: str) -> None:
    """Write back and drop the file's cached pages, so a test starts from none."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def make(tmp_path, fmt: str) -> str:
    path = str(tmp_path / f"disk.{fmt}")
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, path, str(SIZE)], check=True)
    return path


def test_parse_every_mode_and_refuse_others():
    assert set(MODES) == {"writeback", "none", "writethrough", "directsync", "unsafe"}
    assert parse_cache_mode(None).name == "writeback"
    assert parse_cache_mode("directsync").direct and parse_cache_mode("directsync").writethrough
    assert parse_cache_mode("unsafe").ignore_flush
    with pytest.raises(ConfigError, match="cache='sometimes'"):
        parse_cache_mode("sometimes")


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_data_round_trips_in_every_mode(tmp_path, fmt, mode):
    """Aligned and odd writes, through every mode, read back the same and
    leave an image qemu-img finds clean and equal to a reference."""
    path = make(tmp_path, fmt)
    ref = bytearray(SIZE)
    rnd = random.Random(f"{fmt}{mode}")
    with open_image(path, cache=mode) as img:
        assert img.cache_mode == mode and (img.direct is not None) == MODES[mode].direct
        for _ in range(40):
            off = rnd.choice([rnd.randrange(0, SIZE - 70000) & ~511, rnd.randrange(0, SIZE - 70000)])
            n = rnd.choice([512, 4096, 65536, rnd.randrange(1, 70000)])
            data = rnd.randbytes(n)
            img.pwrite(off, data)
            ref[off:off + n] = data
            assert img.pread(off, n) == data
        img.flush()
    (tmp_path / "ref.raw").write_bytes(bytes(ref))
    out = subprocess.run(["qemu-img", "compare", "-f", fmt, "-F", "raw", path, str(tmp_path / "ref.raw")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    if fmt == "qcow2":
        assert subprocess.run(["qemu-img", "check", path], capture_output=True).returncode == 0


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_writethrough_write_is_on_disk_when_it_returns(tmp_path, fmt):
    """writethrough: no dirty page of the file is left when pwrite returns,
    and another opener of the file sees the data (for qcow2 that needs the
    L2 table on disk, not only in kvmkit's cache).  writeback, the control:
    the same writes leave dirty pages and (qcow2) a reader that sees zeros."""
    for mode, expect_dirty in (("writeback", True), ("writethrough", False)):
        (tmp_path / mode).mkdir()
        path = make(tmp_path / mode, fmt)
        evict(path)
        data = os.urandom(256 << 10)
        with open_image(path, cache=mode) as img:
            syncs = img.sync_count
            img.pwrite(1 << 20, data)
            st = cachestat(path)
            with open_image(path, fmt, readonly=True) as other:
                seen = other.pread(1 << 20, len(data))
            if expect_dirty:
                assert st.dirty > 0, "the control run sees no dirty pages: the measurement is blind"
                assert img.sync_count == syncs
                if fmt == "qcow2":
                    assert seen == bytes(len(data))      # L2 still only in memory
            else:
                assert st.dirty == 0 and st.writeback == 0, (st.dirty, st.writeback)
                assert img.sync_count > syncs
                assert seen == data


def test_none_keeps_guest_data_out_of_the_page_cache(tmp_path):
    path = make(tmp_path, "raw")
    evict(path)
    with open_image(path, cache="none") as img:
        buf = mmap.mmap(-1, 1 << 20)                 # page-aligned, like guest RAM
        buf[:] = os.urandom(1 << 20)
        img.pwritev(2 << 20, [memoryview(buf)])
        out = mmap.mmap(-1, 1 << 20)
        img.preadv(2 << 20, [memoryview(out)])
        assert out[:] == buf[:]
        assert img.direct.direct_ops >= 2 and img.direct.bounced_ops == 0
    st = cachestat(path, 2 << 20, 1 << 20)
    assert st.cache == 0, f"{st.cache} pages of O_DIRECT data in the page cache"


def test_unsafe_ignores_flush_and_writeback_does_not(tmp_path):
    path = make(tmp_path, "qcow2")
    with open_image(path, cache="unsafe") as img:
        img.pwrite(0, b"x" * 4096)
        img.flush()
        assert img.sync_count == 0
    with open_image(path, cache="writeback") as img:
        img.pwrite(0, b"y" * 4096)
        before = img.sync_count
        img.flush()
        assert img.sync_count > before


def test_odd_sized_and_misaligned_direct_io_matches_buffered(tmp_path):
    """DirectIO against a plain file: every transfer shape O_DIRECT cannot
    take directly (odd offsets and lengths, buffers at odd addresses, a
    partial block at and past the end of the file) bounces, and the file
    ends up byte-for-byte as buffered writes would have left it, size included."""
    path = str(tmp_path / "f")
    ref = bytearray(os.urandom(300_001))            # not a multiple of any block size
    with open(path, "wb") as f:
        f.write(ref)
    dio = DirectIO(path, readonly=False)
    rnd = random.Random(7)
    try:
        assert dio.align in (512, 4096)
        for i in range(300):
            off = rnd.randrange(0, len(ref) + 5000)
            n = rnd.choice([1, 7, 511, 512, 513, 4095, 4096, 4097, rnd.randrange(1, 3 << 20)])
            pad = rnd.choice([0, 1, 3])
            if i % 2:
                blob = bytearray(pad + n)
                blob[pad:] = rnd.randbytes(n)
                view = memoryview(blob)[pad:]
                parts = [view[:n // 3], view[n // 3:]]      # a two-piece scatter list
                dio.pwritev([p for p in parts if len(p)], off)
                if off > len(ref):
                    ref.extend(bytes(off - len(ref)))
                ref[off:off + n] = view
                assert os.stat(path).st_size == len(ref), f"write {i}: size"
            else:
                out = bytearray(pad + n)
                dio.preadv([memoryview(out)[pad:]], off)
                want = bytes(ref[off:off + n]).ljust(n, b"\0")
                assert out[pad:] == want, f"read {i} at {off}+{n}"
        assert dio.bounced_ops > 100
    finally:
        dio.close()
    with open(path, "rb") as f:
        assert f.read() == bytes(ref)


def test_file_system_without_o_direct_is_a_clear_error(tmp_path, tiny_guest):
    """ramfs has no O_DIRECT: cache=none must say so at open, naming the
    mode and what to use instead (and the CLI names the --disk option)."""
    if os.geteuid() != 0:
        pytest.skip("mounting ramfs needs root")
    mnt = tempfile.mkdtemp(prefix="kvmkit-ramfs-")
    if subprocess.run(["mount", "-t", "ramfs", "ramfs", mnt], capture_output=True).returncode:
        os.rmdir(mnt)
        pytest.skip("cannot mount ramfs here")
    try:
        path = os.path.join(mnt, "disk.raw")
        with open(path, "wb") as f:
            f.truncate(1 << 20)
        for mode in ("none", "directsync"):
            with pytest.raises(ImageError, match="refuses O_DIRECT.*use cache=writeback"):
                open_image(path, cache=mode)
        with open_image(path, cache="writethrough") as img:     # the advice works
            img.pwrite(0, b"ok")
        p = subprocess.run([sys.executable, "-m", "kvmkit.cli.main", "run", "--host-compat", "off",
                            "--kernel", str(tiny_guest("hello")), "--disk", f"path={path},cache=none"],
                           capture_output=True, text=True, timeout=60)
        assert "Traceback" not in p.stderr and p.returncode == 1
        assert f"--disk path={path}: the file system refuses O_DIRECT" in p.stderr, p.stderr
    finally:
        subprocess.run(["umount", mnt], check=True)
        os.rmdir(mnt)
