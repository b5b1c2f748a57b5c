"""virtio-mmio v2 negotiation, and the rng, console and balloon devices on it."""

from __future__ import annotations

import struct

import pytest

from kvmkit.devices.virtio.attach import attach_device
from kvmkit.devices.virtio.balloon import VirtioBalloon
from kvmkit.devices.virtio.console import VirtioConsole
from kvmkit.devices.virtio.constants import Status
from kvmkit.devices.virtio.rng import VirtioRng

from .helpers import Ring, make_context, wait_for


class MmioDriver:
    def __init__(self, ctx, base: int) -> None:
        self.ctx, self.base = ctx, base
        self.rings: dict[int, Ring] = {}

    def r(self, off: int, size: int = 4) -> int:
        return self.ctx.mmio_bus.read(self.base + off, size)

    def w(self, off: int, value: int, size: int = 4) -> None:
        self.ctx.mmio_bus.write(self.base + off, size, value)

    def negotiate(self) -> int:
        assert self.r(0) == 0x74726976 and self.r(4) == 2
        self.w(0x70, 0)
        self.w(0x70, Status.ACKNOWLEDGE | Status.DRIVER)
        feats = 0
        for sel in (0, 1):
            self.w(0x14, sel)
            feats |= self.r(0x10) << (32 * sel)
        for sel in (0, 1):
            self.w(0x24, sel)
            self.w(0x20, (feats >> (32 * sel)) & 0xFFFFFFFF)
        self.w(0x70, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
        assert self.r(0x70) & Status.FEATURES_OK
        self.features = feats
        return feats

    def queue(self, index: int, base: int) -> Ring:
        self.w(0x30, index)
        size = self.r(0x34)
        assert size and not self.r(0x44)
        self.w(0x38, size)
        ring = Ring(self.ctx.memory, base, size)
        for reg, addr in ((0x80, ring.desc), (0x90, ring.avail), (0xA0, ring.used)):
            self.w(reg, addr & 0xFFFFFFFF)
            self.w(reg + 4, addr >> 32)
        self.w(0x44, 1)
        self.rings[index] = ring
        return ring

    def driver_ok(self) -> None:
        self.w(0x70, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK)

    def kick(self, index: int) -> None:
        self.w(0x50, index)


def attach_mmio(dev_factory):
    ctx = make_context()
    dev = dev_factory(ctx.memory)
    attach_device(ctx, dev, "mmio")
    base = ctx.mmio_bus.mappings()[0].base
    return ctx, dev, MmioDriver(ctx, base)


def test_rng_over_mmio_and_cmdline():
    ctx, dev, drv = attach_mmio(lambda m: VirtioRng(m))
    try:
        assert drv.r(8) == 4
        assert ctx.kernel_cmdline == [f"virtio_mmio.device=512@{drv.base:#x}:5"]
        drv.negotiate()
        ring = drv.queue(0, 0x10000)
        drv.driver_ok()
        ring.add([(0x20000, 64, True)])
        drv.kick(0)
        (head, n), = ring.wait_used(1)
        assert n == 64 and ctx.memory.read(0x20000, 64) != bytes(64)
        assert drv.r(0x60) & 1                         # InterruptStatus: used buffer
        assert ctx.irq.lines[5].pulses >= 1
        drv.w(0x64, 1)
        assert drv.r(0x60) == 0
    finally:
        dev.close()


def test_console_output_and_input():
    ctx, dev, drv = attach_mmio(lambda m: VirtioConsole(m, out_fd=None))
    try:
        drv.negotiate()
        rx = drv.queue(0, 0x10000)
        tx = drv.queue(1, 0x20000)
        drv.driver_ok()
        assert struct.unpack("<HHI", bytes(drv.r(0x100 + i, 1) for i in range(8))) == (80, 25, 1)
        ctx.memory.write(0x30000, b"hvc0 says hi\n")
        tx.add([(0x30000, 13, False)])
        drv.kick(1)
        tx.wait_used(1)
        assert bytes(dev.output) == b"hvc0 says hi\n"
        rx.add([(0x40000, 16, True)])
        drv.kick(0)
        dev.feed(b"ls\n")
        (_, n), = rx.wait_used(1)
        assert ctx.memory.read(0x40000, n) == b"ls\n"
    finally:
        dev.close()


def test_balloon_inflate_deflate_and_stats():
    ctx, dev, drv = attach_mmio(lambda m: VirtioBalloon(m))
    try:
        drv.negotiate()
        inflate = drv.queue(0, 0x10000)
        deflate = drv.queue(1, 0x20000)
        stats = drv.queue(2, 0x30000)
        drv.driver_ok()
        # The driver posts its stats buffer at probe.
        ctx.memory.write(0x50000, struct.pack("<HQ", 4, 1000 * 4096) + struct.pack("<HQ", 5, 4000 * 4096))
        stats.add([(0x50000, 20, False)])
        drv.kick(2)
        wait_for(lambda: dev.stats(refresh=False).get("total-memory") == 4000 * 4096)
        pulses = ctx.irq.lines[5].pulses
        dev.set_target(8 * 4096)
        assert drv.r(0x100) == 8 and drv.r(0x60) & 2 and ctx.irq.lines[5].pulses > pulses
        page = 0x800000
        ctx.memory.write(page, b"x" * 4096)
        ctx.memory.write(0x60000, struct.pack("<8I", *range(page // 4096, page // 4096 + 8)))
        inflate.add([(0x60000, 32, False)])
        drv.kick(0)
        inflate.wait_used(1)
        assert ctx.memory.read(page, 4096) == bytes(4096)     # really given back to the host
        drv.w(0x104, 8)                                       # driver updates 'actual'
        assert dev.actual() == 8 * 4096
        deflate.add([(0x60000, 16, False)])
        drv.kick(1)
        deflate.wait_used(1)
        assert len(dev.inflated) == 4
        # Asking for fresh stats returns the buffer to the driver.
        assert dev.request_stats()
        stats.wait_used(1)
        assert dev.query()["actual"] == ctx.memory.total_size - 8 * 4096
    finally:
        dev.close()


@pytest.mark.parametrize("size, desc", [(64, 0xFFFF_0000), (3, 0x1000), (0x7FFFFFFF, 0x1000)],
                         ids=["ring-outside-ram", "size-3", "size-huge"])
def test_bad_queue_setup_sets_needs_reset(size, desc):
    ctx, dev, drv = attach_mmio(lambda m: VirtioRng(m))
    try:
        drv.negotiate()
        drv.w(0x30, 0)
        drv.w(0x38, size)
        drv.w(0x80, desc)
        drv.w(0x44, 1)
        drv.driver_ok()
        assert drv.r(0x70) & Status.DEVICE_NEEDS_RESET
        assert drv.r(0x60) & 2                     # config interrupt
    finally:
        dev.close()


def test_save_and_load_state_resumes_queue():
    ctx, dev, drv = attach_mmio(lambda m: VirtioRng(m))
    try:
        drv.negotiate()
        ring = drv.queue(0, 0x10000)
        drv.driver_ok()
        ring.add([(0x20000, 8, True)])
        drv.kick(0)
        ring.wait_used(1)
        state = dev.save_state()
    finally:
        dev.close()
    ctx2 = make_context()
    ctx2.memory.write(0, ctx.memory.read(0, 1 << 20))
    dev2 = VirtioRng(ctx2.memory)
    attach_device(ctx2, dev2, "mmio")
    try:
        dev2.load_state(state)
        ring.mem = ctx2.memory
        ring.add([(0x20000, 8, True)])
        MmioDriver(ctx2, drv.base).kick(0)
        assert [n for _, n in ring.wait_used(1)] == [8]
    finally:
        dev2.close()
