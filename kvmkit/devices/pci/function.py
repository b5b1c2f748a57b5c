"""One PCI function's 256-byte configuration space: IDs, command/status,
BARs with the sizing protocol, and the capability list.

The guest programs BARs (write all ones, read back the size mask, write an
address) and turns decoding on and off through the command register; a BAR
is on the bus exactly while its decode bit is set and it holds an address,
so the guest can move it and the device follows (``bar_moved`` lets it move
its ioeventfds too).
"""

from __future__ import annotations

import enum
import logging
import struct
import threading
from dataclasses import dataclass

from kvmkit.devices.bus import Bus, BusConflictError
from kvmkit.devices.irq import IrqLine

log = logging.getLogger(__name__)

# Configuration header offsets (type 0).
VENDOR_ID, DEVICE_ID, COMMAND, STATUS = 0x00, 0x02, 0x04, 0x06
REVISION, CLASS_PROG = 0x08, 0x09
CACHE_LINE, LATENCY, HEADER_TYPE = 0x0C, 0x0D, 0x0E
BAR0 = 0x10
SUBSYS_VENDOR, SUBSYS_ID = 0x2C, 0x2E
CAP_PTR, INT_LINE, INT_PIN = 0x34, 0x3C, 0x3D

CMD_IO, CMD_MEM, CMD_MASTER, CMD_INTX_DISABLE = 0x1, 0x2, 0x4, 0x400
STATUS_INTX, STATUS_CAP_LIST = 0x08, 0x10
CONFIG_SIZE = 256


class BarKind(enum.Enum):
    IO = "io"
    MEM32 = "mem32"
    MEM64 = "mem64"


@dataclass(frozen=True)
class Bar:
    index: int
    size: int
    kind: BarKind
    prefetchable: bool = False

    @property
    def flags(self) -> int:
        if self.kind is BarKind.IO:
            return 0x1
        return (0x4 if self.kind is BarKind.MEM64 else 0) | (0x8 if self.prefetchable else 0)


class _BarWindow:
    """What the bus sees for one BAR: forwards to the function with the BAR index."""

    def __init__(self, fn: "PciFunction", index: int) -> None:
        self.fn, self.index = fn, index

    def read(self, offset: int, size: int) -> int:
        return self.fn.bar_read(self.index, offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.fn.bar_write(self.index, offset, size, value)

    def __repr__(self) -> str:
        return f"<{self.fn!r} BAR{self.index}>"


class PciFunction:
    """Base class for a PCI function; subclasses implement ``bar_read``/``bar_write``."""

    def __init__(self, vendor: int, device: int, class_code: int, revision: int = 0,
                 subsystem_vendor: int = 0, subsystem: int = 0, header_type: int = 0) -> None:
        self.cfg = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        self.w1c = bytearray(CONFIG_SIZE)
        struct.pack_into("<HH", self.cfg, VENDOR_ID, vendor, device)
        self.cfg[REVISION] = revision
        self.cfg[CLASS_PROG:CLASS_PROG + 3] = class_code.to_bytes(3, "little")
        self.cfg[HEADER_TYPE] = header_type
        struct.pack_into("<HH", self.cfg, SUBSYS_VENDOR, subsystem_vendor, subsystem)
        struct.pack_into("<H", self.wmask, COMMAND, CMD_IO | CMD_MEM | CMD_MASTER | 0x40 | 0x100 | CMD_INTX_DISABLE)
        struct.pack_into("<H", self.w1c, STATUS, 0xF900)
        self.wmask[CACHE_LINE] = self.wmask[LATENCY] = self.wmask[INT_LINE] = 0xFF
        self.bars: dict[int, Bar] = {}
        self._mapped: dict[int, int] = {}
        self._bar_windows: dict[int, _BarWindow] = {}
        self._last_cap = 0
        self._next_cap = 0x40
        self.mmio_bus: Bus | None = None
        self.pio_bus: Bus | None = None
        self.address = (0, 0, 0)   # (bus, slot, function), set by the host bridge
        self.intx_line: IrqLine | None = None
        self.intx_gsi = 0
        self.intx_lock = threading.RLock()   # INTx state; subclasses guard their ISR with it
        self._intx_asserted = False

    # -- construction ------------------------------------------------------
    def add_bar(self, index: int, size: int, kind: BarKind = BarKind.MEM32,
                prefetchable: bool = False) -> Bar:
        if size & (size - 1) or size < (4 if kind is BarKind.IO else 16):
            raise ValueError(f"BAR size {size:#x} is not a power of two")
        bar = Bar(index, size, kind, prefetchable)
        self.bars[index] = bar
        struct.pack_into("<I", self.cfg, BAR0 + 4 * index, bar.flags)
        return bar

    def add_capability(self, cap_id: int, body: bytes, wmask: bytes | None = None) -> int:
        """Append a capability (``body`` excludes the id/next bytes); returns its offset."""
        off = self._next_cap
        length = 2 + len(body)
        if off + length > CONFIG_SIZE:
            raise ValueError("PCI capability list is full")
        self.cfg[off] = cap_id
        self.cfg[off + 2:off + length] = body
        if wmask:
            self.wmask[off + 2:off + 2 + len(wmask)] = wmask
        if self._last_cap:
            self.cfg[self._last_cap + 1] = off
        else:
            self.cfg[CAP_PTR] = off
            struct.pack_into("<H", self.cfg, STATUS, self.status | STATUS_CAP_LIST)
        self._last_cap = off
        self._next_cap = (off + length + 3) & ~3
        return off

    def set_interrupt(self, line: int, pin: int = 1) -> None:
        self.cfg[INT_LINE], self.cfg[INT_PIN] = line, pin

    @property
    def interrupt_pin(self) -> int:
        """0 for none, 1-4 for INTA#-INTD# (the Interrupt Pin register)."""
        return self.cfg[INT_PIN]

    def connect_intx(self, line: IrqLine, gsi: int) -> None:
        """The host bridge wires our pin to ``line`` (IOAPIC input ``gsi``) and,
        as firmware does, writes the Interrupt Line register."""
        self.intx_line, self.intx_gsi = line, gsi
        self.cfg[INT_LINE] = gsi

    def set_intx(self, asserted: bool) -> None:
        """Assert or deassert our INTx#.  Status bit 3 shows it; the line
        follows unless the driver set Interrupt Disable (command bit 10), and
        clearing that bit again re-asserts a still-pending interrupt."""
        with self.intx_lock:
            self._intx_asserted = asserted
            self._drive_intx()

    def _drive_intx(self) -> None:
        status = self.status & ~STATUS_INTX
        struct.pack_into("<H", self.cfg, STATUS, status | (STATUS_INTX if self._intx_asserted else 0))
        if self.intx_line is not None:
            self.intx_line.set_level(self._intx_asserted and not self.command & CMD_INTX_DISABLE)

    def attach(self, mmio_bus: Bus, pio_bus: Bus) -> None:
        self.mmio_bus, self.pio_bus = mmio_bus, pio_bus
        self._remap()

    def set_bar_address(self, index: int, address: int) -> None:
        """Firmware's job: give a BAR its initial address (and enable decoding)."""
        bar = self.bars[index]
        struct.pack_into("<I", self.cfg, BAR0 + 4 * index, (address & 0xFFFFFFFF) | bar.flags)
        if bar.kind is BarKind.MEM64:
            struct.pack_into("<I", self.cfg, BAR0 + 4 * index + 4, address >> 32)
        self.command |= CMD_IO if bar.kind is BarKind.IO else CMD_MEM
        self._remap()

    # -- register helpers --------------------------------------------------
    @property
    def command(self) -> int:
        return struct.unpack_from("<H", self.cfg, COMMAND)[0]

    @command.setter
    def command(self, value: int) -> None:
        struct.pack_into("<H", self.cfg, COMMAND, value)

    @property
    def status(self) -> int:
        return struct.unpack_from("<H", self.cfg, STATUS)[0]

    def bar_address(self, index: int) -> int:
        bar = self.bars[index]
        lo = struct.unpack_from("<I", self.cfg, BAR0 + 4 * index)[0]
        addr = lo & (~0x3 if bar.kind is BarKind.IO else ~0xF) & 0xFFFFFFFF
        if bar.kind is BarKind.MEM64:
            addr |= struct.unpack_from("<I", self.cfg, BAR0 + 4 * index + 4)[0] << 32
        return addr

    def _bar_for_offset(self, off: int) -> tuple[Bar, bool] | None:
        """The BAR whose register holds config offset ``off`` (and whether it is a high dword)."""
        if not BAR0 <= off < BAR0 + 24:
            return None
        i = (off - BAR0) // 4
        if i in self.bars:
            return self.bars[i], False
        if i - 1 in self.bars and self.bars[i - 1].kind is BarKind.MEM64:
            return self.bars[i - 1], True
        return None

    # -- configuration access (from the host bridge) ------------------------
    def config_read(self, off: int, size: int) -> int:
        if off < 0 or off + size > CONFIG_SIZE:
            return (1 << (8 * size)) - 1
        return int.from_bytes(self.cfg[off:off + size], "little")

    def config_write(self, off: int, size: int, value: int) -> None:
        if off < 0 or off + size > CONFIG_SIZE:
            return
        if off & ~3 != (off + size - 1) & ~3:
            return                                   # accesses never cross a dword
        if BAR0 <= off < BAR0 + 24:
            self._write_bar(off, size, value)
        else:
            old_cmd = self.command
            data = value.to_bytes(size, "little")
            for i, b in enumerate(data):
                o = off + i
                cur = self.cfg[o]
                cur = (cur & ~self.wmask[o]) | (b & self.wmask[o])
                cur &= ~(b & self.w1c[o])
                self.cfg[o] = cur & 0xFF
            if self.command != old_cmd:
                self._remap()
                if (self.command ^ old_cmd) & CMD_INTX_DISABLE:
                    with self.intx_lock:
                        self._drive_intx()
        self.config_written(off, size)

    def config_written(self, off: int, size: int) -> None:
        """Hook for capabilities (MSI-X control, virtio's PCI config access)."""

    def _write_bar(self, off: int, size: int, value: int) -> None:
        reg = off & ~3
        found = self._bar_for_offset(reg)
        if found is None:
            return                                   # unimplemented BARs read as zero
        cur = bytearray(self.cfg[reg:reg + 4])
        cur[off - reg:off - reg + size] = value.to_bytes(size, "little")
        v = int.from_bytes(cur, "little")
        bar, high = found
        if high:
            v &= ~((bar.size - 1) >> 32) & 0xFFFFFFFF
        else:
            v = (v & ~(bar.size - 1) & ~(0x3 if bar.kind is BarKind.IO else 0xF) & 0xFFFFFFFF) | bar.flags
        struct.pack_into("<I", self.cfg, reg, v)
        self._remap()

    def _remap(self) -> None:
        """Put each BAR on its bus iff decoding is on and it holds a sane address."""
        if self.mmio_bus is None:
            return
        cmd = self.command
        for i, bar in self.bars.items():
            io = bar.kind is BarKind.IO
            bus = self.pio_bus if io else self.mmio_bus
            limit = 1 << (16 if io else 32 if bar.kind is BarKind.MEM32 else 64)
            addr = self.bar_address(i)
            on = bool(cmd & (CMD_IO if io else CMD_MEM)) and 0 < addr and addr + bar.size <= limit
            want = addr if on else None
            have = self._mapped.get(i)
            if want == have:
                continue
            if have is not None:
                bus.unregister(self._window(i), have)
                del self._mapped[i]
            if want is not None:
                try:
                    bus.register(want, bar.size, self._window(i))
                except BusConflictError as exc:
                    log.warning("PCI %s BAR%d not mapped: %s", self.bdf, i, exc)
                    want = None
                else:
                    self._mapped[i] = want
            self.bar_moved(i, have, want)

    def _window(self, index: int) -> _BarWindow:
        if index not in self._bar_windows:
            self._bar_windows[index] = _BarWindow(self, index)
        return self._bar_windows[index]

    def mapped_address(self, index: int) -> int | None:
        return self._mapped.get(index)

    @property
    def bdf(self) -> str:
        b, d, f = self.address
        return f"{b:02x}:{d:02x}.{f}"

    # -- subclass hooks ----------------------------------------------------
    def bar_moved(self, index: int, old: int | None, new: int | None) -> None:
        """A BAR appeared, moved or disappeared on its bus."""

    def bar_read(self, index: int, offset: int, size: int) -> int:
        return 0

    def bar_write(self, index: int, offset: int, size: int, value: int) -> None:
        pass

    def unplug(self) -> None:
        for i, addr in list(self._mapped.items()):
            bus = self.pio_bus if self.bars[i].kind is BarKind.IO else self.mmio_bus
            bus.unregister(self._window(i), addr)
            self.bar_moved(i, addr, None)
        self._mapped.clear()

    def save_state(self) -> dict:
        return {"cfg": bytes(self.cfg).hex()}

    def load_state(self, state: dict) -> None:
        self.cfg[:] = bytes.fromhex(state["cfg"])
        self._remap()
        # The line's level is not in the irqchip state KVM restores (its
        # per-source line state is not saved): drive it again from ours.
        self.set_intx(bool(self.status & STATUS_INTX))

