"""virtio-pci negotiation as Linux's driver does it, then virtio-blk requests
against real raw and qcow2 images, through the real buses."""

from __future__ import annotations

import os
import struct
import subprocess

import pytest

from kvmkit.devices.virtio.attach import attach_device
from kvmkit.devices.virtio.blk import S_IOERR, S_OK, S_UNSUPP, VirtioBlock, open_backend
from kvmkit.devices.virtio.constants import F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, Status

from .helpers import make_context, wait_for
from .pci_driver import VirtioPciDriver, blk_header, find_slot, msix_driver

SIZE = 4 << 20
HDR, DATA, STATUS = 0x100000, 0x200000, 0x300000


def make_raw(tmp_path, fill=True):
    path = tmp_path / "disk.raw"
    data = os.urandom(SIZE) if fill else bytes(SIZE)
    path.write_bytes(data)
    return str(path), data


@pytest.fixture
def blk(tmp_path):
    path, data = make_raw(tmp_path)
    ctx = make_context()
    dev = VirtioBlock(ctx.memory, "vda", open_backend(path, "raw", False), path=path, fmt="raw")
    attach_device(ctx, dev, "pci")
    drv, ring = msix_driver(ctx)
    yield ctx, dev, drv, ring, path, data
    dev.close()


def request(ctx, drv, ring, rtype, sector, nbytes=0, payload=b"", indirect=False):
    mem = ctx.memory
    mem.write(HDR, blk_header(rtype, sector))
    mem.write_u8(STATUS, 0xFF)
    bufs = [(HDR, 16, False)]
    if payload:
        mem.write(DATA, payload)
        bufs.append((DATA, len(payload), False))
    elif nbytes:
        bufs.append((DATA, nbytes, True))
    bufs.append((STATUS, 1, True))
    head = ring.add_indirect(0x400000, bufs) if indirect else ring.add(bufs)
    drv.kick(0)
    used = ring.wait_used(1)
    assert used[0][0] == head
    return mem.read_u8(STATUS), used[0][1]


def test_negotiation_and_config(blk):
    ctx, dev, drv, ring, path, data = blk
    assert drv.status() == Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK
    for f in (F_VERSION_1, F_EVENT_IDX, F_INDIRECT_DESC):
        assert drv.features >> f & 1
    assert drv.device_cfg(0, 8) == SIZE // 512         # capacity
    assert drv.device_cfg(20, 4) == 512                # blk_size
    assert drv.common_read(18, 2) == 1                 # num_queues


def test_features_without_version_1_refused(tmp_path):
    path, _ = make_raw(tmp_path)
    ctx = make_context()
    dev = VirtioBlock(ctx.memory, "vda", open_backend(path, "raw", False))
    attach_device(ctx, dev, "pci")
    drv = VirtioPciDriver(ctx, find_slot(ctx.pio_bus, 0x1AF4, 0x1042))
    with pytest.raises(AssertionError, match="refused"):
        drv.negotiate(want=(1 << 32) - 1)
    dev.close()


def test_read_write_flush(blk):
    ctx, dev, drv, ring, path, data = blk
    st, n = request(ctx, drv, ring, 0, 8, nbytes=4096)
    assert (st, n) == (S_OK, 4097)
    assert ctx.memory.read(DATA, 4096) == data[4096:8192]
    new = os.urandom(8192)
    assert request(ctx, drv, ring, 1, 100, payload=new)[0] == S_OK
    assert request(ctx, drv, ring, 4, 0)[0] == S_OK
    with open(path, "rb") as f:
        f.seek(100 * 512)
        assert f.read(8192) == new
    st, _ = request(ctx, drv, ring, 0, 100, nbytes=8192, indirect=True)
    assert st == S_OK and ctx.memory.read(DATA, 8192) == new
    assert ctx.irq.msis[1].fired >= 1                  # queue vector, not config vector
    assert ctx.irq.msis[0].fired == 0


def test_out_of_range_and_unaligned_fail_only_the_request(blk):
    ctx, dev, drv, ring, *_ = blk
    assert request(ctx, drv, ring, 0, SIZE // 512, nbytes=512)[0] == S_IOERR
    assert request(ctx, drv, ring, 0, 2**62, nbytes=512)[0] == S_IOERR
    assert request(ctx, drv, ring, 0, 0, nbytes=100)[0] == S_IOERR
    assert request(ctx, drv, ring, 99, 0)[0] == S_UNSUPP
    assert request(ctx, drv, ring, 0, 0, nbytes=512)[0] == S_OK


def test_get_id_discard_write_zeroes(blk):
    ctx, dev, drv, ring, path, data = blk
    st, n = request(ctx, drv, ring, 8, 0, nbytes=20)
    assert st == S_OK and ctx.memory.read(DATA, 3) == b"vda"
    seg = struct.pack("<QII", 16, 16, 0)
    assert request(ctx, drv, ring, 13, 0, payload=seg)[0] == S_OK
    with open(path, "rb") as f:
        f.seek(16 * 512)
        assert f.read(16 * 512) == bytes(16 * 512)


def test_malformed_chain_sets_needs_reset_and_reset_recovers(blk):
    ctx, dev, drv, ring, *_ = blk
    ring.write_desc(0, 0x100000, 16, 1, 0)            # NEXT pointing at itself: a loop
    ring.publish(0)
    drv.kick(0)
    wait_for(lambda: drv.status() & Status.DEVICE_NEEDS_RESET)
    assert ctx.irq.msis[0].fired >= 1                  # config interrupt told the driver
    drv.negotiate()
    assert drv.status() & Status.DEVICE_NEEDS_RESET == 0
    ring = drv.setup_queue(0, 0x10000, vector=1)
    drv.driver_ok()
    assert request(ctx, drv, ring, 0, 0, nbytes=512)[0] == S_OK


def test_readonly_disk(tmp_path):
    path, _ = make_raw(tmp_path)
    ctx = make_context()
    dev = VirtioBlock(ctx.memory, "vda", open_backend(path, "raw", True), readonly=True)
    attach_device(ctx, dev, "pci")
    drv = VirtioPciDriver(ctx, find_slot(ctx.pio_bus, 0x1AF4, 0x1042))
    drv.negotiate()
    assert drv.features >> 5 & 1                       # VIRTIO_BLK_F_RO
    ring = drv.setup_queue(0, 0x10000)
    drv.driver_ok()
    assert request(ctx, drv, ring, 1, 0, payload=bytes(512))[0] == S_IOERR
    assert request(ctx, drv, ring, 0, 0, nbytes=512)[0] == S_OK
    dev.close()


def test_qcow2_image(tmp_path):
    path = str(tmp_path / "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", path, "8M"], check=True)
    ctx = make_context()
    dev = VirtioBlock(ctx.memory, "vda", open_backend(path, "qcow2", False))
    attach_device(ctx, dev, "pci")
    drv = VirtioPciDriver(ctx, find_slot(ctx.pio_bus, 0x1AF4, 0x1042))
    drv.negotiate()
    ring = drv.setup_queue(0, 0x10000)
    drv.driver_ok()
    payload = os.urandom(65536 + 4096)
    assert request(ctx, drv, ring, 1, 1000, payload=payload)[0] == S_OK
    assert request(ctx, drv, ring, 4, 0)[0] == S_OK
    dev.close()
    out = subprocess.run(["qemu-img", "check", path], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    raw = tmp_path / "out.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", path, str(raw)], check=True)
    assert raw.read_bytes()[1000 * 512:1000 * 512 + len(payload)] == payload
