"""A qcow2 image on a full file system: every write that fails with ENOSPC
gives back the clusters it had allocated, so a guest retrying writes to a
full disk (werror=report, or resumed after werror=stop) leaks nothing, and
once space is freed the image is clean by ``qemu-img check``.  On a real
tmpfs of 1 MiB (the test runs as root; it mounts one)."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from kvmkit.block.create import create_image
from kvmkit.block.image import open_image

CLUSTER = 64 << 10


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "fs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def test_failed_writes_on_a_full_disk_leak_no_clusters(small_fs, qemu):
    path = small_fs / "d.qcow2"
    create_image(str(path), "qcow2", 64 << 20)
    filler = small_fs / "filler"                     # room held back for the metadata at flush
    filler.write_bytes(b"\xff" * (256 << 10))
    failures = 0
    with open_image(str(path)) as img:
        for n in range(64):                          # 64 clusters cannot fit in 1 MiB
            try:
                img.pwrite(n * CLUSTER, bytes([n + 1]) * CLUSTER)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                failures += 1
        assert failures >= 40                        # the guest kept retrying on a full disk
        written = 64 - failures
        # space comes back (the operator cleaned up): the metadata can be written
        filler.unlink()
        for n in range(written, written + 2):        # and the guest writes on: the file grows past
            img.pwrite(n * CLUSTER, bytes([n + 1]) * CLUSTER)    # whatever a failed write kept
        written += 2
        img.flush()
        for n in range(written):
            assert img.pread(n * CLUSTER, 1) == bytes([n + 1])
    res = qemu.img("check", "--output=human", str(path), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "No errors" in res.stdout
    assert "leaked" not in res.stdout
