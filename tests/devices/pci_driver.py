"""What Linux's virtio_pci_modern does, done by a test through the real buses."""

from __future__ import annotations

import struct

from kvmkit.devices.virtio.constants import Status

from .helpers import Ring


class ConfigSpace:
    """Configuration mechanism #1 through the port I/O bus."""

    def __init__(self, pio, slot: int, bus: int = 0) -> None:
        self.pio, self.slot, self.bus = pio, slot, bus

    def _addr(self, off: int) -> None:
        self.pio.write(0xCF8, 4, 0x80000000 | (self.bus << 16) | (self.slot << 11) | (off & 0xFC))

    def read(self, off: int, size: int = 4) -> int:
        self._addr(off)
        return self.pio.read(0xCFC + (off & 3), size)

    def write(self, off: int, size: int, value: int) -> None:
        self._addr(off)
        self.pio.write(0xCFC + (off & 3), size, value)

    def caps(self) -> list[int]:
        out, p = [], self.read(0x34, 1)
        while p:
            out.append(p)
            p = self.read(p + 1, 1)
        return out


def find_slot(pio, vendor: int, device: int) -> int | None:
    for slot in range(32):
        if ConfigSpace(pio, slot).read(0, 4) == vendor | device << 16:
            return slot
    return None


class VirtioPciDriver:
    def __init__(self, ctx, slot: int) -> None:
        self.ctx, self.cfg = ctx, ConfigSpace(ctx.pio_bus, slot)
        lo, hi = self.cfg.read(0x10), self.cfg.read(0x14)
        self.bar = (lo & ~0xF) | hi << 32
        self.regions: dict[int, int] = {}
        self.notify_mult = 0
        for c in self.cfg.caps():
            cap_id = self.cfg.read(c, 1)
            if cap_id == 0x09:
                cfg_type, offset = self.cfg.read(c + 3, 1), self.cfg.read(c + 8)
                self.regions.setdefault(cfg_type, offset)
                if cfg_type == 2:
                    self.notify_mult = self.cfg.read(c + 16)
            elif cap_id == 0x11:
                self.msix_cap = c
                self.msix_table = self.cfg.read(c + 4) & ~7
        self.rings: dict[int, Ring] = {}

    def mmio_read(self, off: int, size: int) -> int:
        return self.ctx.mmio_bus.read(self.bar + off, size)

    def mmio_write(self, off: int, size: int, value: int) -> None:
        self.ctx.mmio_bus.write(self.bar + off, size, value)

    def common_read(self, off: int, size: int) -> int:
        return self.mmio_read(self.regions[1] + off, size)

    def common_write(self, off: int, size: int, value: int) -> None:
        self.mmio_write(self.regions[1] + off, size, value)

    def device_cfg(self, off: int, size: int) -> int:
        return self.mmio_read(self.regions[4] + off, size)

    def enable_msix(self) -> None:
        ctrl = self.cfg.read(self.msix_cap + 2, 2)
        self.cfg.write(self.msix_cap + 2, 2, ctrl | 0x8000)

    def program_vector(self, vec: int, addr: int = 0xFEE00000, data: int = 0x40) -> None:
        base = self.msix_table + 16 * vec
        self.mmio_write(base, 4, addr)
        self.mmio_write(base + 4, 4, 0)
        self.mmio_write(base + 8, 4, data)
        self.mmio_write(base + 12, 4, 0)          # unmask last, as Linux does

    def negotiate(self, want: int | None = None) -> int:
        self.common_write(20, 1, 0)
        assert self.common_read(20, 1) == 0
        self.common_write(20, 1, Status.ACKNOWLEDGE)
        self.common_write(20, 1, Status.ACKNOWLEDGE | Status.DRIVER)
        feats = 0
        for sel in (0, 1):
            self.common_write(0, 4, sel)
            feats |= self.common_read(4, 4) << (32 * sel)
        use = feats if want is None else feats & want
        for sel in (0, 1):
            self.common_write(8, 4, sel)
            self.common_write(12, 4, (use >> (32 * sel)) & 0xFFFFFFFF)
        self.common_write(20, 1, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
        assert self.common_read(20, 1) & Status.FEATURES_OK, "device refused the features"
        self.features = use
        return use

    def setup_queue(self, index: int, base: int, size: int | None = None, vector: int | None = None) -> Ring:
        self.common_write(22, 2, index)
        qsize = self.common_read(24, 2)
        size = size or qsize
        self.common_write(24, 2, size)
        ring = Ring(self.ctx.memory, base, size, event_idx=bool(self.features >> 29 & 1))
        for off, addr in ((32, ring.desc), (40, ring.avail), (48, ring.used)):
            self.common_write(off, 4, addr & 0xFFFFFFFF)          # vp_iowrite64_twopart
            self.common_write(off + 4, 4, addr >> 32)
        if vector is not None:
            self.common_write(26, 2, vector)
            assert self.common_read(26, 2) == vector
        self.common_write(28, 2, 1)
        self.rings[index] = ring
        return ring

    def driver_ok(self) -> None:
        self.common_write(20, 1, Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK)

    def status(self) -> int:
        return self.common_read(20, 1)

    def kick(self, index: int) -> None:
        self.common_write(22, 2, index)
        off = self.common_read(30, 2)
        self.mmio_write(self.regions[2] + off * self.notify_mult, 2, index)


def blk_header(rtype: int, sector: int) -> bytes:
    return struct.pack("<IIQ", rtype, 0, sector)


def msix_driver(ctx, device_id: int = 0x1042) -> tuple[VirtioPciDriver, Ring]:
    """The function with ``device_id`` driven as Linux does with MSI-X: vector 0
    for config changes, vector 1 for queue 0, all features, DRIVER_OK."""
    drv = VirtioPciDriver(ctx, find_slot(ctx.pio_bus, 0x1AF4, device_id))
    drv.enable_msix()
    drv.program_vector(0)
    drv.program_vector(1)
    drv.negotiate()
    drv.common_write(16, 2, 0)                    # config vector
    ring = drv.setup_queue(0, 0x10000, vector=1)
    drv.driver_ok()
    return drv, ring
