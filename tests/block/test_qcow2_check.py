"""check / check -r all, with qemu-img's exit codes, against qemu-img's verdict."""

from __future__ import annotations

import os
from pathlib import Path

from kvmkit.block.create import create_image
from kvmkit.block.image import open_image
from kvmkit.block.qcow2.check import check_image
from kvmkit.block.qcow2.image import Qcow2Image


def _image(tmp_path: Path) -> Path:
    path = tmp_path / "c.qcow2"
    create_image(str(path), "qcow2", 8 << 20)
    with open_image(str(path)) as img:
        img.pwrite(0, b"a" * 300000)
    return path


def test_clean_image(qemu, tmp_path: Path) -> None:
    path = _image(tmp_path)
    with Qcow2Image.open(str(path), readonly=True) as img:
        r = check_image(img)
    assert r.exit_code == 0 and r.allocated_clusters == 5
    qemu.assert_clean(path)


def test_leak_found_and_repaired(qemu, tmp_path: Path) -> None:
    path = _image(tmp_path)
    with Qcow2Image.open(str(path)) as img:
        off = img.refs.allocate(3)                 # allocated, referenced by nothing
        os.pwrite(img.fd, b"x" * 3 * img.cs, off)
        img.flush()
    assert qemu.img("check", path, check=False).returncode == 3
    with Qcow2Image.open(str(path), readonly=True) as img:
        r = check_image(img)
    assert (r.exit_code, r.leaks, r.corruptions) == (3, 3, 0)
    with Qcow2Image.open(str(path)) as img:
        r = check_image(img, repair=True)
    assert (r.exit_code, r.leaks_fixed) == (0, 3)
    qemu.assert_clean(path)


def test_corruption_found_and_repaired(qemu, tmp_path: Path) -> None:
    path = _image(tmp_path)
    with Qcow2Image.open(str(path)) as img:
        host = img.l2cache.get(img.l1[0] & 0x00FFFFFFFFFFFE00)[1] & 0x00FFFFFFFFFFFE00
        img.refs.set(host // img.cs, 0)            # in use, but counted free
        img.flush()
    assert qemu.img("check", path, check=False).returncode == 2
    with Qcow2Image.open(str(path), readonly=True) as img:
        r = check_image(img)
    assert r.exit_code == 2 and r.corruptions >= 1
    with Qcow2Image.open(str(path), allow_corrupt=True) as img:
        r = check_image(img, repair=True)
    assert r.exit_code == 0 and r.corruptions_fixed >= 1
    qemu.assert_clean(path)
    qemu.io(path, "read -P 0x61 0 300000")


def test_qemu_made_leak_repaired_by_kvmkit(qemu, tmp_path: Path) -> None:
    path = tmp_path / "q.qcow2"
    qemu.img("create", "-f", "qcow2", path, "4M")
    qemu.io(path, "write -P 1 0 1M")
    with Qcow2Image.open(str(path)) as img:
        off = img.refs.allocate(2)
        os.pwrite(img.fd, b"x" * 2 * img.cs, off)
        img.flush()
    assert qemu.img("check", path, check=False).returncode == 3
    with Qcow2Image.open(str(path)) as img:
        assert check_image(img, repair=True).exit_code == 0
    qemu.assert_clean(path)
    with Qcow2Image.open(str(path), readonly=True) as img:
        assert check_image(img).exit_code == 0


def test_dirty_image_is_repaired_on_open(qemu, tmp_path: Path) -> None:
    path = tmp_path / "d.qcow2"
    create_image(str(path), "qcow2", 4 << 20, options={"lazy_refcounts": "on"})
    img = Qcow2Image.open(str(path))
    img.pwrite(0, b"z" * 200000)
    off = img.refs.allocate(2)            # a leak the dirty bit excuses
    os.pwrite(img.fd, b"x" * 2 * img.cs, off)
    img.flush()
    # simulate a crash: drop the object without the close that clears the bit
    os.close(img.fd)
    img._closed = True
    with Qcow2Image.open(str(path)) as img:     # opening for writing repairs
        assert img.pread(0, 200000) == b"z" * 200000
    qemu.assert_clean(path)
