"""The PCI host bridge: configuration mechanism #1 (0xCF8 address, 0xCFC
data) for bus 0, the bridge itself at 00:00.0, and firmware's job of giving
each BAR an initial address.

There is no BIOS: Linux finds the functions by probing 0xCF8/0xCFC, keeps the
BAR addresses we assigned (they lie in the MMIO window above RAM), and may
move them; :class:`~kvmkit.devices.pci.function.PciFunction` follows.
"""

from __future__ import annotations

import threading

from kvmkit.devices.bus import Bus
from kvmkit.devices.context import MmioAllocator
from kvmkit.devices.pci.function import BarKind, PciFunction
from kvmkit.devices.pci.intx import IntxRoute, IntxRouter

CONFIG_ADDRESS = 0xCF8
CONFIG_DATA = 0xCFC
MAX_SLOTS = 32

HOST_BRIDGE_VENDOR = 0x8086      # Linux's pci_sanity_check wants a host bridge or an Intel vendor ID
HOST_BRIDGE_DEVICE = 0x29C0      # Q35 MCH; the id is cosmetic
CLASS_HOST_BRIDGE = 0x060000


class _AddressPort:
    def __init__(self, host: "PciHostBridge") -> None:
        self.host = host

    def read(self, offset: int, size: int) -> int:
        if offset == 0 and size == 4:
            return self.host.config_address
        return (1 << (8 * size)) - 1

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:             # byte writes to 0xCFB are mechanism #2 probes
            self.host.config_address = value & 0x80FFFFFC


class _DataPort:
    def __init__(self, host: "PciHostBridge") -> None:
        self.host = host

    def read(self, offset: int, size: int) -> int:
        return self.host.config_read(offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.host.config_write(offset, size, value)


class PciHostBridge:
    """Bus 0 with up to 32 single-function devices; slot 0 is the bridge."""

    def __init__(self, pio_bus: Bus, mmio_bus: Bus, mmio: MmioAllocator | None = None) -> None:
        self.pio_bus, self.mmio_bus, self.mmio = pio_bus, mmio_bus, mmio
        self.config_address = 0
        self._lock = threading.Lock()
        self.slots: dict[int, PciFunction] = {}
        self.intx: IntxRouter | None = None     # INTx wiring; set before the first add()
        self.bridge = PciFunction(HOST_BRIDGE_VENDOR, HOST_BRIDGE_DEVICE, CLASS_HOST_BRIDGE)
        self.slots[0] = self.bridge
        pio_bus.register(CONFIG_ADDRESS, 4, _AddressPort(self))
        pio_bus.register(CONFIG_DATA, 4, _DataPort(self))

    def add(self, fn: PciFunction, slot: int | None = None) -> int:
        """Plug ``fn`` in (the next free slot unless given), assign its BARs, map them."""
        with self._lock:
            if slot is None:
                slot = next((s for s in range(1, MAX_SLOTS) if s not in self.slots), None)
                if slot is None:
                    raise ValueError("PCI bus 0 is full (31 devices)")
            elif slot in self.slots or not 0 < slot < MAX_SLOTS:
                raise ValueError(f"PCI slot {slot} is taken or out of range")
            self.slots[slot] = fn
        fn.address = (0, slot, 0)
        if self.intx is not None and fn.interrupt_pin:
            pin = fn.interrupt_pin - 1
            fn.connect_intx(self.intx.connect(slot, fn, pin), self.intx.gsi(slot, pin))
        fn.attach(self.mmio_bus, self.pio_bus)
        if self.mmio is not None:
            for bar in fn.bars.values():
                if bar.kind is not BarKind.IO:
                    fn.set_bar_address(bar.index, self.mmio.allocate(bar.size, align=max(bar.size, 0x1000)))
        return slot

    def intx_routes(self) -> tuple[IntxRoute, ...]:
        """Every INTx pin of the populated slots, for the MP table and ``_PRT``."""
        if self.intx is None:
            return ()
        return self.intx.routes([s for s, f in self.slots.items() if f.interrupt_pin])

    def remove(self, fn: PciFunction) -> None:
        with self._lock:
            for s, f in list(self.slots.items()):
                if f is fn and s:
                    del self.slots[s]
        fn.set_intx(False)                 # an unplugged function holds no line high
        fn.unplug()

    def _target(self) -> tuple[PciFunction | None, int]:
        a = self.config_address
        if not a & 0x80000000:
            return None, 0
        bus, slot, func, reg = (a >> 16) & 0xFF, (a >> 11) & 0x1F, (a >> 8) & 0x7, a & 0xFC
        if bus != 0 or func != 0:
            return None, reg
        return self.slots.get(slot), reg

    def config_read(self, offset: int, size: int) -> int:
        fn, reg = self._target()
        if fn is None:
            return (1 << (8 * size)) - 1
        return fn.config_read(reg + offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        fn, reg = self._target()
        if fn is not None:
            fn.config_write(reg + offset, size, value)

    def save_state(self) -> dict:
        return {"address": self.config_address,
                "slots": {s: f.save_state() for s, f in self.slots.items()}}

    def load_state(self, state: dict) -> None:
        self.config_address = state["address"]
        for s, st in state["slots"].items():
            fn = self.slots.get(int(s))
            if fn is not None:
                fn.load_state(st)


def find_host_bridge(pio_bus: Bus) -> PciHostBridge | None:
    """The bridge already registered at 0xCF8 on ``pio_bus``, if any."""
    m = pio_bus.find(CONFIG_ADDRESS)
    if m is not None and isinstance(m.device, _AddressPort):
        return m.device.host
    return None
