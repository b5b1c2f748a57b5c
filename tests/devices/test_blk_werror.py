"""werror/rerror as QEMU defines them, on a really full file system (a
small tmpfs): report fails the request, ignore completes it, stop (and
enospc on ENOSPC) holds it, tells the VMM (BLOCK_IO_ERROR data) and runs it
again, in order with what came after, once space is freed and the VM
continues."""

from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from kvmkit.devices.virtio.attach import attach_device
from kvmkit.devices.virtio.blk import S_IOERR, S_OK, VirtioBlock, open_backend
from kvmkit.devices.virtio.config import parse_disk
from kvmkit.errors import ConfigError

from .helpers import fill_fs, make_context, wait_for
from .pci_driver import blk_header, msix_driver

HDR, DATA, STATUS = 0x100000, 0x200000, 0x300000
CHUNK = 64 << 10


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MiB tmpfs of the test's own."""
    mnt = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def _disk(ctx, path, werror):
    events = []
    dev = VirtioBlock(ctx.memory, "vd-full", open_backend(str(path), "raw", False), path=str(path),
                      fmt="raw", werror=werror, on_error=events.append)
    attach_device(ctx, dev, "pci")
    drv, ring = msix_driver(ctx)
    return dev, drv, ring, events


def _write(ctx, ring, drv, slot, sector, payload):
    mem = ctx.memory
    hdr, status = HDR + 16 * slot, STATUS + slot
    mem.write(hdr, blk_header(1, sector))                    # VIRTIO_BLK_T_OUT
    mem.write(DATA + slot * CHUNK, payload)
    mem.write_u8(status, 0xFF)
    head = ring.add([(hdr, 16, False), (DATA + slot * CHUNK, len(payload), False), (status, 1, True)])
    drv.kick(0)
    return head, status


@pytest.mark.parametrize("werror", ["stop", "enospc"])
def test_stop_holds_the_request_and_cont_retries_it(small_fs, werror):
    ctx = make_context()
    img = small_fs / "disk.raw"
    with open(img, "wb") as f:
        f.truncate(4 << 20)                                  # sparse: writes allocate
    dev, drv, ring, events = _disk(ctx, img, werror)
    try:
        filler = fill_fs(small_fs)
        a = os.urandom(CHUNK)
        b = os.urandom(CHUNK)
        head_a, st_a = _write(ctx, ring, drv, 0, 0, a)
        wait_for(lambda: events, 5)
        head_b, st_b = _write(ctx, ring, drv, 1, 1024, b)     # queued behind the stopped one
        assert events[0] == {"device": "vd-full", "node-name": "vd-full", "operation": "write",
                             "action": "stop", "nospace": True, "reason": os.strerror(28)}
        assert ring.take_used() == [] and ctx.memory.read_u8(st_a) == 0xFF
        wait_for(lambda: dev.device_state() == {"stalled": 2}, 5)
        filler.unlink()
        dev.retry()
        used = ring.wait_used(2)
        assert [u[0] for u in used] == [head_a, head_b]      # in the guest's order
        assert ctx.memory.read_u8(st_a) == S_OK and ctx.memory.read_u8(st_b) == S_OK
        with open(img, "rb") as f:
            assert f.read(CHUNK) == a
            f.seek(1024 * 512)
            assert f.read(CHUNK) == b
    finally:
        dev.close()


@pytest.mark.parametrize("werror, status", [("report", S_IOERR), ("ignore", S_OK)])
def test_report_fails_and_ignore_completes(small_fs, werror, status):
    ctx = make_context()
    img = small_fs / "disk.raw"
    with open(img, "wb") as f:
        f.truncate(4 << 20)
    dev, drv, ring, events = _disk(ctx, img, werror)
    try:
        fill_fs(small_fs)
        _, st = _write(ctx, ring, drv, 0, 0, os.urandom(CHUNK))
        ring.wait_used(1)
        assert ctx.memory.read_u8(st) == status
        assert events and events[0]["action"] == werror and events[0]["nospace"] is True
    finally:
        dev.close()


def test_disk_option_parses_and_refuses_error_actions():
    d = parse_disk("path=/x.img,werror=stop,rerror=ignore")
    assert (d.werror, d.rerror) == ("stop", "ignore")
    assert (parse_disk("/x.img").werror, parse_disk("/x.img").rerror) == ("enospc", "report")
    with pytest.raises(ConfigError, match="werror='pause' must be one of enospc, stop, report, ignore"):
        parse_disk("path=/x,werror=pause")
    with pytest.raises(ConfigError, match="rerror='enospc' must be one of report, stop, ignore"):
        parse_disk("path=/x,rerror=enospc")
