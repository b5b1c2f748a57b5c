"""The MSI-X capability: a vector table and pending-bit array in a BAR, each
entry backed by an :class:`~kvmkit.devices.irq.MsiVector` (a GSI route plus
an irqfd in KVM), so a device thread interrupts the guest with one eventfd
write and no ioctl.

Masking is done here: a masked entry (or the function mask) records a
pending bit instead of firing, and unmasking fires it, as the spec requires.
The KVM route is only rewritten when an entry's address/data change.
"""

from __future__ import annotations

import struct
import threading

from kvmkit.devices.irq import InterruptController, MsiVector
from kvmkit.devices.pci.function import PciFunction

CAP_ID_MSIX = 0x11
CTRL_ENABLE = 0x8000
CTRL_FUNCTION_MASK = 0x4000
ENTRY_SIZE = 16
VECTOR_MASKED = 1


class MsixCapability:
    """MSI-X for ``fn``: ``nvec`` vectors, table and PBA at offsets in BAR ``bar``."""

    def __init__(self, fn: PciFunction, irq: InterruptController, nvec: int, bar: int,
                 table_offset: int, pba_offset: int) -> None:
        if not 0 < nvec <= 2048:
            raise ValueError(f"MSI-X table size {nvec} out of range")
        self.fn, self.nvec = fn, nvec
        self.table = bytearray(ENTRY_SIZE * nvec)
        for i in range(nvec):
            struct.pack_into("<I", self.table, ENTRY_SIZE * i + 12, VECTOR_MASKED)
        self.pending = [False] * nvec
        self._applied: list[tuple[int, int, bool] | None] = [None] * nvec
        self._lock = threading.Lock()
        self.vectors: list[MsiVector] = [irq.allocate_msi() for _ in range(nvec)]
        body = struct.pack("<HII", nvec - 1, table_offset | bar, pba_offset | bar)
        self.offset = fn.add_capability(CAP_ID_MSIX, body, wmask=b"\x00\xC0")
        self.table_offset, self.pba_offset = table_offset, pba_offset
        self.table_size = ENTRY_SIZE * nvec
        self.pba_size = ((nvec + 63) // 64) * 8

    @property
    def control(self) -> int:
        return struct.unpack_from("<H", self.fn.cfg, self.offset + 2)[0]

    @property
    def enabled(self) -> bool:
        return bool(self.control & CTRL_ENABLE)

    def control_written(self) -> None:
        """Enable or function-mask changed: re-apply every entry."""
        with self._lock:
            for i in range(self.nvec):
                self._apply(i)

    def _entry(self, i: int) -> tuple[int, int, bool]:
        lo, hi, data, ctrl = struct.unpack_from("<IIII", self.table, ENTRY_SIZE * i)
        masked = bool(ctrl & VECTOR_MASKED) or bool(self.control & CTRL_FUNCTION_MASK) or not self.enabled
        return (hi << 32) | lo, data, masked

    def _apply(self, i: int) -> None:
        entry = self._entry(i)
        if entry != self._applied[i]:
            addr, data, masked = entry
            self.vectors[i].configure(addr, data, masked)
            self._applied[i] = entry
        if not entry[2] and self.pending[i]:
            self.pending[i] = False
            self.vectors[i].trigger()

    def table_read(self, offset: int, size: int) -> int:
        if offset < 0 or offset + size > self.table_size:
            return 0
        return int.from_bytes(self.table[offset:offset + size], "little")

    def table_write(self, offset: int, size: int, value: int) -> None:
        if offset < 0 or offset + size > self.table_size or size not in (4, 8):
            return
        with self._lock:
            self.table[offset:offset + size] = value.to_bytes(size, "little")
            i = offset // ENTRY_SIZE
            # Apply on a vector-control write (Linux unmasks last) or while unmasked.
            if (offset + size - 1) % ENTRY_SIZE >= 12 or not self._entry(i)[2]:
                self._apply(i)

    def pba_read(self, offset: int, size: int) -> int:
        bits = 0
        for i, p in enumerate(self.pending):
            if p:
                bits |= 1 << i
        return (bits >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def notify(self, vector: int) -> bool:
        """Fire ``vector`` (or mark it pending while masked); False if MSI-X is off."""
        if not self.enabled or not 0 <= vector < self.nvec:
            return False
        with self._lock:
            if self._entry(vector)[2]:
                self.pending[vector] = True
            else:
                self.vectors[vector].trigger()
        return True

    def eventfd(self, vector: int) -> int:
        return self.vectors[vector].eventfd

    def release(self) -> None:
        for v in self.vectors:
            v.release()
        self.vectors = []

    def reset(self) -> None:
        """Every entry masked and zeroed, nothing pending (control is in config space)."""
        with self._lock:
            self.table[:] = bytes(len(self.table))
            for i in range(self.nvec):
                struct.pack_into("<I", self.table, ENTRY_SIZE * i + 12, VECTOR_MASKED)
                self.pending[i] = False
        self.control_written()

    def save_state(self) -> dict:
        return {"table": bytes(self.table).hex(), "pending": list(self.pending)}

    def load_state(self, state: dict) -> None:
        self.table[:] = bytes.fromhex(state["table"])
        self.pending = list(state["pending"])
        self._applied = [None] * self.nvec
        self.control_written()
