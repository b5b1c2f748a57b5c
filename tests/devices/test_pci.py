"""PCI host bridge, config space and BAR sizing through the real port bus."""

from __future__ import annotations

from kvmkit.devices.bus import Bus
from kvmkit.devices.context import MmioAllocator
from kvmkit.devices.pci import BarKind, PciFunction, PciHostBridge
from kvmkit.devices.pci.host import find_host_bridge

from .pci_driver import ConfigSpace


class Dummy(PciFunction):
    def __init__(self) -> None:
        super().__init__(0x1234, 0x5678, 0x020000)
        self.add_bar(0, 0x1000, BarKind.MEM32)
        self.add_bar(2, 0x4000, BarKind.MEM64, prefetchable=True)
        self.add_bar(4, 0x20, BarKind.IO)
        self.writes = []

    def bar_read(self, index, offset, size):
        return 0xA0 + index

    def bar_write(self, index, offset, size, value):
        self.writes.append((index, offset, value))


def setup():
    pio, mmio = Bus("pio"), Bus("mmio")
    host = PciHostBridge(pio, mmio, MmioAllocator(0xE000_0000, 0xF000_0000))
    dev = Dummy()
    slot = host.add(dev)
    return pio, mmio, host, dev, slot


def test_mechanism1_probe_like_linux():
    pio, *_ = setup()
    pio.write(0xCF8, 4, 0x80000000)
    assert pio.read(0xCF8, 4) == 0x80000000        # pci_check_type1
    host = ConfigSpace(pio, 0)
    assert host.read(0, 2) == 0x8086
    assert host.read(0x0A, 2) == 0x0600           # class: host bridge
    assert ConfigSpace(pio, 7).read(0, 4) == 0xFFFFFFFF   # empty slot
    pio.write(0xCF8, 4, 0x00000000)                # enable bit clear: no config cycle
    assert pio.read(0xCFC, 4) == 0xFFFFFFFF
    assert find_host_bridge(pio) is not None


def test_ids_and_byte_access():
    pio, _, _, _, slot = setup()
    cs = ConfigSpace(pio, slot)
    assert cs.read(0, 4) == 0x56781234
    assert cs.read(2, 2) == 0x5678
    assert cs.read(0x0B, 1) == 0x02
    cs.write(0, 4, 0)                                 # read-only
    assert cs.read(0, 2) == 0x1234
    cs.write(0x3C, 1, 0x0B)
    assert cs.read(0x3C, 1) == 0x0B


def test_bar_sizing_protocol_and_move():
    pio, mmio, _, dev, slot = setup()
    cs = ConfigSpace(pio, slot)
    old0 = cs.read(0x10)
    assert old0 & 0xF == 0 and mmio.find(old0) is not None     # pre-assigned and decoded
    cmd = cs.read(0x04, 2)
    cs.write(0x04, 2, cmd & ~0x3)                 # Linux turns decoding off while sizing
    assert mmio.find(old0) is None
    cs.write(0x10, 4, 0xFFFFFFFF)
    assert cs.read(0x10) == 0xFFFFF000            # 4 KiB, mem32
    cs.write(0x18, 4, 0xFFFFFFFF)
    cs.write(0x1C, 4, 0xFFFFFFFF)
    assert cs.read(0x18) == 0xFFFFC00C            # 16 KiB, 64-bit, prefetchable
    assert cs.read(0x1C) == 0xFFFFFFFF
    cs.write(0x20, 4, 0xFFFFFFFF)
    assert cs.read(0x20) == 0xFFFFFFE1            # 32 bytes of I/O
    cs.write(0x14, 4, 0xFFFFFFFF)                 # unimplemented BAR reads 0
    assert cs.read(0x14) == 0
    cs.write(0x30, 4, 0xFFFFFFFF)                 # no expansion ROM
    assert cs.read(0x30) == 0
    cs.write(0x10, 4, 0xC000_0000)
    cs.write(0x18, 4, 0x0000_0000)
    cs.write(0x1C, 4, 0x1)                        # 0x1_0000_0000
    cs.write(0x20, 4, 0x6000)
    cs.write(0x04, 2, cmd | 0x3)
    assert mmio.read(0xC000_0010, 4) == 0xA0
    assert mmio.read(0x1_0000_0000, 4) == 0xA2
    assert pio.read(0x6004, 1) == 0xA4
    mmio.write(0xC000_0008, 4, 7)
    assert dev.writes == [(0, 8, 7)]
    assert mmio.find(old0) is None


def test_status_write_one_to_clear_and_caps():
    pio, _, _, dev, slot = setup()
    dev.cfg[0x07] |= 0x80
    cs = ConfigSpace(pio, slot)
    cs.write(0x06, 2, 0x8000)
    assert not cs.read(0x06, 2) & 0x8000


def test_save_restore_roundtrip():
    pio, mmio, host, dev, slot = setup()
    cs = ConfigSpace(pio, slot)
    cs.write(0x3C, 1, 9)
    st = dev.save_state()
    dev2 = Dummy()
    dev2.load_state(st)
    assert dev2.cfg == dev.cfg
