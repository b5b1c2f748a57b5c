"""The virtio-pci modern (1.x) transport (virtio 1.2 §4.1).

One 64-bit memory BAR holds the common configuration, the ISR byte, the
device configuration, one notify doorbell per queue (notify_off_multiplier
4, so each queue has its own address and its own ioeventfd) and the MSI-X
table and PBA.  Queue interrupts go through MSI-X (irqfd); INTA# with the
ISR byte is the fallback for drivers that do not enable MSI-X (virtio 1.2
§4.1.4.5: the device sets an ISR bit and asserts the line, a driver's read of
the ISR returns the bits, clears them and deasserts).  Setting an ISR bit and
reading it are one atomic step under the function's INTx lock: otherwise an
interrupt raised by the I/O thread between the vCPU's read and its clear is
lost, and the driver waits forever for a request that completed.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

from kvmkit.devices.pci.function import INT_LINE, BarKind, PciFunction
from kvmkit.devices.pci.msix import MsixCapability
from kvmkit.devices.virtio.constants import ISR_CONFIG, ISR_QUEUE, NO_VECTOR, DeviceId
from kvmkit.devices.virtio.device import VirtioDevice
from kvmkit.devices.virtio.queue import Virtqueue
from kvmkit.errors import KvmkitError

log = logging.getLogger(__name__)

VENDOR_REDHAT_QUMRANET = 0x1AF4
MODERN_DEVICE_BASE = 0x1040
CAP_VENDOR = 0x09
CAP_COMMON, CAP_NOTIFY, CAP_ISR, CAP_DEVICE, CAP_PCI_CFG = 1, 2, 3, 4, 5

BAR = 0
BAR_SIZE = 0x8000
COMMON_OFF, COMMON_LEN = 0x0000, 0x40
ISR_OFF, ISR_LEN = 0x1000, 4
DEVICE_OFF, DEVICE_LEN = 0x2000, 0x1000
NOTIFY_OFF, NOTIFY_MULT = 0x3000, 4
MSIX_TABLE_OFF, MSIX_PBA_OFF = 0x4000, 0x6000

CLASS_CODES = {DeviceId.NET: 0x020000, DeviceId.BLOCK: 0x018000, DeviceId.CONSOLE: 0x078000,
               DeviceId.RNG: 0xFF0000, DeviceId.BALLOON: 0x050000, DeviceId.VSOCK: 0xFF0000}


def _virtio_cap(cfg_type: int, offset: int, length: int, extra: bytes = b"") -> bytes:
    """virtio_pci_cap without its id/next bytes: cap_len, cfg_type, bar, id, pad, offset, length."""
    return struct.pack("<BBBBxxII", 16 + len(extra), cfg_type, BAR, 0, offset, length) + extra


class VirtioPciFunction(PciFunction):
    """A virtio device on PCI; implements :class:`~kvmkit.devices.virtio.device.Transport`."""

    def __init__(self, device: VirtioDevice, irq: Any, vm: Any = None) -> None:
        super().__init__(VENDOR_REDHAT_QUMRANET, MODERN_DEVICE_BASE + device.device_id,
                         CLASS_CODES.get(device.device_id, 0xFF0000), revision=1,
                         subsystem_vendor=VENDOR_REDHAT_QUMRANET, subsystem=0x40)
        self.device = device
        self.vm = vm
        self.isr = 0
        self.config_vector = NO_VECTOR
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.queue_select = 0
        self._ioeventfds: list[tuple[int, int]] = []
        self.set_interrupt(0xFF, pin=1)          # INTA#; the host bridge wires it (0xFF: not yet)
        self.add_bar(BAR, BAR_SIZE, BarKind.MEM64)
        nq = len(device.queues)
        self.add_capability(CAP_VENDOR, _virtio_cap(CAP_COMMON, COMMON_OFF, COMMON_LEN))
        self.add_capability(CAP_VENDOR, _virtio_cap(CAP_NOTIFY, NOTIFY_OFF, NOTIFY_MULT * nq,
                                                    struct.pack("<I", NOTIFY_MULT)))
        self.add_capability(CAP_VENDOR, _virtio_cap(CAP_ISR, ISR_OFF, ISR_LEN))
        self.add_capability(CAP_VENDOR, _virtio_cap(CAP_DEVICE, DEVICE_OFF, DEVICE_LEN))
        # VIRTIO_PCI_CAP_PCI_CFG: bar/offset/length writable, then a data window.
        self.pci_cfg_cap = self.add_capability(
            CAP_VENDOR, _virtio_cap(CAP_PCI_CFG, 0, 0, b"\0\0\0\0"),
            wmask=b"\0\0\xff\0\0\0" + b"\xff" * 12)
        self.msix = MsixCapability(self, irq, nq + 1, BAR, MSIX_TABLE_OFF, MSIX_PBA_OFF)
        device.transport = self
        self._initial_cfg = bytes(self.cfg)

    # -- Transport ---------------------------------------------------------
    def signal_queue(self, queue: Virtqueue) -> None:
        if self.msix.enabled:
            if queue.msix_vector != NO_VECTOR:
                self.msix.notify(queue.msix_vector)
        else:
            self._intx(ISR_QUEUE)

    def signal_config(self) -> None:
        if self.msix.enabled:
            if self.config_vector != NO_VECTOR:
                self.msix.notify(self.config_vector)
        else:
            self._intx(ISR_CONFIG)

    def _intx(self, bit: int) -> None:
        with self.intx_lock:
            self.isr |= bit
            self.set_intx(True)

    def read_isr(self) -> int:
        """The driver's ISR read: the pending bits, cleared, and INTx deasserted."""
        with self.intx_lock:
            value, self.isr = self.isr, 0
            self.set_intx(False)
        return value

    def describe(self) -> dict[str, Any]:
        return {"transport": "pci", "pci-address": self.bdf, "bar0": self.mapped_address(BAR),
                "msix": self.msix.enabled}

    # -- BAR 0 -------------------------------------------------------------
    def bar_read(self, index: int, offset: int, size: int) -> int:
        if COMMON_OFF <= offset < COMMON_OFF + COMMON_LEN:
            return self._common_read(offset - COMMON_OFF, size)
        if ISR_OFF <= offset < ISR_OFF + ISR_LEN:
            return self.read_isr() if offset == ISR_OFF else 0
        if DEVICE_OFF <= offset < DEVICE_OFF + DEVICE_LEN:
            return self.device.read_config(offset - DEVICE_OFF, size)
        if MSIX_TABLE_OFF <= offset < MSIX_PBA_OFF:
            return self.msix.table_read(offset - MSIX_TABLE_OFF, size)
        if MSIX_PBA_OFF <= offset < BAR_SIZE:
            return self.msix.pba_read(offset - MSIX_PBA_OFF, size)
        return 0

    def bar_write(self, index: int, offset: int, size: int, value: int) -> None:
        if COMMON_OFF <= offset < COMMON_OFF + COMMON_LEN:
            self._common_write(offset - COMMON_OFF, size, value)
        elif DEVICE_OFF <= offset < DEVICE_OFF + DEVICE_LEN:
            with self.device.lock:
                self.device.write_config(offset - DEVICE_OFF, size, value)
        elif NOTIFY_OFF <= offset < MSIX_TABLE_OFF:
            self.device.kick((offset - NOTIFY_OFF) // NOTIFY_MULT)
        elif MSIX_TABLE_OFF <= offset < MSIX_PBA_OFF:
            self.msix.table_write(offset - MSIX_TABLE_OFF, size, value)

    # -- common configuration (virtio 1.2 §4.1.4.3) ---------------------------
    def _queue(self) -> Virtqueue | None:
        qs = self.device.queues
        return qs[self.queue_select] if self.queue_select < len(qs) else None

    def _common_read(self, off: int, size: int) -> int:
        if size == 8 or (off in (32, 36, 40, 44, 48, 52) and size == 4):
            base = off & ~7
            full = self._common_reg(base)
            return (full >> (8 * (off - base))) & ((1 << (8 * size)) - 1)
        return self._common_reg(off) & ((1 << (8 * size)) - 1)

    def _common_reg(self, off: int) -> int:
        d, q = self.device, self._queue()
        if off == 0:
            return self.device_feature_select
        if off == 4:
            return d.feature_word(self.device_feature_select)
        if off == 8:
            return self.driver_feature_select
        if off == 12:
            return d.driver_word(self.driver_feature_select)
        if off == 16:
            return self.config_vector
        if off == 18:
            return len(d.queues)
        if off == 20:
            return d.status
        if off == 21:
            return d.config_generation
        if off == 22:
            return self.queue_select
        if q is None:
            return NO_VECTOR if off == 26 else 0
        return {24: q.size, 26: q.msix_vector, 28: int(q.ready), 30: q.index,
                32: q.desc_addr, 40: q.avail_addr, 48: q.used_addr, 56: q.index}.get(off, 0)

    def _common_write(self, off: int, size: int, value: int) -> None:
        d = self.device
        if off == 0:
            self.device_feature_select = value
        elif off == 8:
            self.driver_feature_select = value
        elif off == 12:
            with d.lock:
                d.set_driver_word(self.driver_feature_select, value)
        elif off == 16:
            self.config_vector = value if value < self.msix.nvec or value == NO_VECTOR else NO_VECTOR
        elif off == 20:
            if size == 1:
                self._set_status(value)
        elif off == 22:
            self.queue_select = value
        else:
            self._queue_write(off, size, value)

    def _queue_write(self, off: int, size: int, value: int) -> None:
        q = self._queue()
        if q is None:
            return
        with self.device.lock:
            if off == 26:
                q.msix_vector = value if value < self.msix.nvec or value == NO_VECTOR else NO_VECTOR
                return
            if q.ready:
                return                                   # addresses are frozen once enabled
            if off == 24:
                q.size = value
            elif off == 28 and value == 1:
                q.ready = True
            elif 32 <= off < 56:
                attr = {32: "desc_addr", 40: "avail_addr", 48: "used_addr"}[off & ~7]
                shift = 8 * (off & 7)
                mask = ((1 << (8 * size)) - 1) << shift
                setattr(q, attr, (getattr(q, attr) & ~mask) | ((value << shift) & mask))

    def _set_status(self, value: int) -> None:
        self.device.set_status(value)
        if value == 0:
            self._clear_interrupts()

    def _clear_interrupts(self) -> None:
        self.read_isr()
        self.config_vector = NO_VECTOR

    def reset(self) -> None:
        """Machine reset: configuration space and MSI-X back to how we plugged in."""
        self._clear_interrupts()
        self.queue_select = self.device_feature_select = self.driver_feature_select = 0
        self.cfg[:] = self._initial_cfg
        self.cfg[INT_LINE] = self.intx_gsi if self.intx_line is not None else 0xFF
        self._remap()
        self.msix.reset()

    # -- config space hooks ------------------------------------------------
    def config_written(self, off: int, size: int) -> None:
        m = self.msix.offset
        if m <= off + size - 1 and off <= m + 3:
            self.msix.control_written()
        c = self.pci_cfg_cap
        if off >= c + 16 and off < c + 20:
            self._pci_cfg_access(write=True)

    def config_read(self, off: int, size: int) -> int:
        c = self.pci_cfg_cap
        if c + 16 <= off < c + 20:
            self._pci_cfg_access(write=False)
        return super().config_read(off, size)

    def _pci_cfg_access(self, write: bool) -> None:
        """VIRTIO_PCI_CAP_PCI_CFG: a window into BAR 0 through config space."""
        c = self.pci_cfg_cap
        bar = self.cfg[c + 4]
        offset, length = struct.unpack_from("<II", self.cfg, c + 8)
        if bar != BAR or length not in (1, 2, 4) or offset + length > BAR_SIZE:
            return
        if write:
            value = int.from_bytes(self.cfg[c + 16:c + 16 + length], "little")
            self.bar_write(BAR, offset, length, value)
        else:
            value = self.bar_read(BAR, offset, length)
            self.cfg[c + 16:c + 16 + length] = value.to_bytes(length, "little")

    # -- ioeventfd doorbells ---------------------------------------------------
    def bar_moved(self, index: int, old: int | None, new: int | None) -> None:
        if self.vm is None or index != BAR:
            return
        for fd, addr in self._ioeventfds:
            try:
                self.vm.ioeventfd(fd, addr, 0, deassign=True)
            except (OSError, KvmkitError) as exc:
                log.warning("%s: ioeventfd deassign failed: %s", self.device.name, exc)
        self._ioeventfds = []
        if new is None:
            return
        for q in self.device.queues:
            addr = new + NOTIFY_OFF + NOTIFY_MULT * q.index
            self.vm.ioeventfd(q.notify_fd, addr, 0)
            self._ioeventfds.append((q.notify_fd, addr))

    def close(self) -> None:
        self.bar_moved(BAR, None, None)
        self.msix.release()

    def save_state(self) -> dict:
        return {"pci": super().save_state(), "msix": self.msix.save_state(), "isr": self.isr,
                "config_vector": self.config_vector, "queue_select": self.queue_select,
                "dfsel": self.device_feature_select, "drfsel": self.driver_feature_select}

    def load_state(self, state: dict) -> None:
        self.isr, self.config_vector = state["isr"], state["config_vector"]
        super().load_state(state["pci"])
        self.msix.load_state(state["msix"])
        self.queue_select = state["queue_select"]
        self.device_feature_select, self.driver_feature_select = state["dfsel"], state["drfsel"]

