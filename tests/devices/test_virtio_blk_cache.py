"""virtio-blk in each cache mode, through the real PCI registers and rings:
what the guest is told (F_CONFIG_WCE, the writeback byte), and what a
request costs the host before its completion reaches the used ring
(fdatasync calls, dirty pages per cachestat(2))."""

from __future__ import annotations

import os

import pytest

from kvmkit.block import fileio
from kvmkit.devices.virtio.attach import attach_device
from kvmkit.devices.virtio.blk import (
    F_CONFIG_WCE, S_OK, T_FLUSH, T_IN, T_OUT, WRITEBACK_OFFSET, VirtioBlock, open_backend)

from .helpers import make_context
from .pci_driver import blk_header, msix_driver
from .test_virtio_pci_blk import DATA, make_raw, request


def _dirty_pages(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        st = fileio.cachestat(fd)
    finally:
        os.close(fd)
    if st is None:
        pytest.skip("cachestat(2) needs Linux 6.5")
    return st.dirty + st.writeback


@pytest.fixture
def blk_in(tmp_path):
    made = []

    def make(cache: str):
        (tmp_path / cache).mkdir()
        path, data = make_raw(tmp_path / cache)
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
        ctx = make_context()
        dev = VirtioBlock(ctx.memory, "vda", open_backend(path, "raw", False, cache), path=path, fmt="raw")
        attach_device(ctx, dev, "pci")
        drv, ring = msix_driver(ctx)
        made.append(dev)
        return ctx, dev, drv, ring, path
    yield make
    for dev in made:
        dev.close()


@pytest.mark.parametrize("cache,wce", [("writeback", 1), ("none", 1), ("unsafe", 1),
                                       ("writethrough", 0), ("directsync", 0)])
def test_guest_is_told_whether_the_disk_has_a_volatile_cache(blk_in, cache, wce):
    ctx, dev, drv, ring, path = blk_in(cache)
    assert drv.features >> F_CONFIG_WCE & 1
    assert drv.device_cfg(WRITEBACK_OFFSET, 1) == wce
    assert dev.query()["inserted"]["cache"] == {           # QMP query-block, as QEMU spells it
        "writeback": bool(wce), "direct": cache in ("none", "directsync"), "no-flush": cache == "unsafe"}


def test_writethrough_request_is_durable_before_it_is_used(blk_in):
    """The driver sees the completion only after fdatasync: when the used
    ring shows it, the host has no dirty page of the file and the image has
    issued a sync.  The writeback disk next to it, the control, completes
    with dirty pages and no sync."""
    payload = os.urandom(64 << 10)
    for cache in ("writeback", "writethrough"):
        ctx, dev, drv, ring, path = blk_in(cache)
        syncs = dev.image.sync_count
        assert request(ctx, drv, ring, T_OUT, 2048, payload=payload)[0] == S_OK
        dirty = _dirty_pages(path)             # right at completion, before anything else runs
        if cache == "writethrough":
            assert dirty == 0 and dev.image.sync_count > syncs, (dirty, dev.image.sync_count)
        else:
            assert dirty > 0 and dev.image.sync_count == syncs, (dirty, dev.image.sync_count)
        assert request(ctx, drv, ring, T_IN, 2048, nbytes=len(payload))[0] == S_OK
        assert ctx.memory.read(DATA, len(payload)) == payload


def test_guest_can_turn_the_write_cache_off(blk_in):
    """Linux's ``echo "write through" > /sys/block/vda/queue/write_cache``
    writes 0 to the writeback byte: from then on writes are durable at completion."""
    ctx, dev, drv, ring, path = blk_in("writeback")
    drv.mmio_write(drv.regions[4] + WRITEBACK_OFFSET, 1, 0)
    assert drv.device_cfg(WRITEBACK_OFFSET, 1) == 0
    syncs = dev.image.sync_count
    assert request(ctx, drv, ring, T_OUT, 0, payload=os.urandom(8192))[0] == S_OK
    assert dev.image.sync_count > syncs and _dirty_pages(path) == 0


def test_unsafe_flush_request_completes_without_a_sync(blk_in):
    ctx, dev, drv, ring, path = blk_in("unsafe")
    assert request(ctx, drv, ring, T_OUT, 0, payload=os.urandom(4096))[0] == S_OK
    assert request(ctx, drv, ring, T_FLUSH, 0)[0] == S_OK
    assert dev.stats["flush_operations"] == 1 and dev.image.sync_count == 0
    ctx2, dev2, drv2, ring2, _ = blk_in("writeback")
    assert request(ctx2, drv2, ring2, T_FLUSH, 0)[0] == S_OK
    assert dev2.image.sync_count == 1


def test_direct_disk_with_odd_guest_buffers(blk_in):
    """cache=none: a guest buffer at an odd address goes through the bounce
    buffer; an aligned one goes straight to O_DIRECT; both read back."""
    ctx, dev, drv, ring, path = blk_in("none")
    data = os.urandom(4096)
    assert request(ctx, drv, ring, T_OUT, 8, payload=data)[0] == S_OK     # DATA is page-aligned
    assert dev.image.direct.direct_ops >= 1
    before = dev.image.direct.bounced_ops
    mem = ctx.memory
    mem.write(0x100000, blk_header(T_IN, 8))
    mem.write_u8(0x300000, 0xFF)
    ring.add([(0x100000, 16, False), (DATA + 1, 4096, True), (0x300000, 1, True)])
    drv.kick(0)
    ring.wait_used(1)
    assert mem.read_u8(0x300000) == S_OK and mem.read(DATA + 1, 4096) == data
    assert dev.image.direct.bounced_ops > before
