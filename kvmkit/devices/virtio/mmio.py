"""The virtio-mmio transport, version 2 (virtio 1.2 §4.2).

For kernels that find devices on the command line
(``virtio_mmio.device=SIZE@BASE:IRQ``).  QueueNotify gets an ioeventfd
with a datamatch per queue; the interrupt is an ISA line driven through an
irqfd (an edge, as Firecracker does), with InterruptStatus telling the
driver why.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from kvmkit.devices.virtio.constants import ISR_CONFIG, ISR_QUEUE
from kvmkit.devices.virtio.device import VirtioDevice
from kvmkit.devices.virtio.queue import Virtqueue
from kvmkit.errors import KvmkitError
from kvmkit.kvm import eventfd

log = logging.getLogger(__name__)

MMIO_SIZE = 0x200
MAGIC = 0x74726976          # "virt"
VERSION = 2
VENDOR = 0x554D4551         # "QEMU", what guests are used to seeing

MAGIC_VALUE, VERSION_REG, DEVICE_ID, VENDOR_ID = 0x000, 0x004, 0x008, 0x00C
DEVICE_FEATURES, DEVICE_FEATURES_SEL = 0x010, 0x014
DRIVER_FEATURES, DRIVER_FEATURES_SEL = 0x020, 0x024
QUEUE_SEL, QUEUE_NUM_MAX, QUEUE_NUM, QUEUE_READY = 0x030, 0x034, 0x038, 0x044
QUEUE_NOTIFY, INTERRUPT_STATUS, INTERRUPT_ACK, STATUS = 0x050, 0x060, 0x064, 0x070
QUEUE_DESC_LOW, QUEUE_DESC_HIGH = 0x080, 0x084
QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH = 0x090, 0x094
QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH = 0x0A0, 0x0A4
CONFIG_GENERATION, CONFIG = 0x0FC, 0x100

_ADDR_REGS = {QUEUE_DESC_LOW: ("desc_addr", 0), QUEUE_DESC_HIGH: ("desc_addr", 32),
              QUEUE_DRIVER_LOW: ("avail_addr", 0), QUEUE_DRIVER_HIGH: ("avail_addr", 32),
              QUEUE_DEVICE_LOW: ("used_addr", 0), QUEUE_DEVICE_HIGH: ("used_addr", 32)}


class VirtioMmioTransport:
    """A virtio device at ``base`` on the MMIO bus, interrupting on ``gsi``."""

    def __init__(self, device: VirtioDevice, base: int, gsi: int, irq: Any = None,
                 vm: Any = None) -> None:
        self.device, self.base, self.gsi, self.vm = device, base, gsi, vm
        self.interrupt_status = 0
        self.device_features_sel = self.driver_features_sel = self.queue_sel = 0
        self._lock = threading.Lock()
        self._irqfd: int | None = None
        self._line = irq.irq_line(gsi) if irq is not None else None
        self._ioeventfds: list[tuple[int, int]] = []
        if vm is not None:
            self._irqfd = eventfd()
            vm.irqfd(self._irqfd, gsi)
            for q in device.queues:
                vm.ioeventfd(q.notify_fd, base + QUEUE_NOTIFY, 4, datamatch=q.index)
                self._ioeventfds.append((q.notify_fd, q.index))
        device.transport = self

    @property
    def cmdline(self) -> str:
        return f"virtio_mmio.device={MMIO_SIZE}@{self.base:#x}:{self.gsi}"

    # -- Transport ---------------------------------------------------------
    def _raise(self, bit: int) -> None:
        with self._lock:
            self.interrupt_status |= bit
        if self._irqfd is not None:
            os.eventfd_write(self._irqfd, 1)
        elif self._line is not None:
            self._line.pulse()

    def signal_queue(self, queue: Virtqueue) -> None:
        self._raise(ISR_QUEUE)

    def signal_config(self) -> None:
        self._raise(ISR_CONFIG)

    def describe(self) -> dict[str, Any]:
        return {"transport": "mmio", "base": self.base, "irq": self.gsi}

    # -- registers ---------------------------------------------------------
    def _queue(self) -> Virtqueue | None:
        qs = self.device.queues
        return qs[self.queue_sel] if self.queue_sel < len(qs) else None

    def read(self, offset: int, size: int) -> int:
        d = self.device
        if offset >= CONFIG:
            return d.read_config(offset - CONFIG, size)
        if size != 4:
            return 0
        q = self._queue()
        if offset == MAGIC_VALUE:
            return MAGIC
        if offset == VERSION_REG:
            return VERSION
        if offset == DEVICE_ID:
            return d.device_id
        if offset == VENDOR_ID:
            return VENDOR
        if offset == DEVICE_FEATURES:
            return d.feature_word(self.device_features_sel)
        if offset == QUEUE_NUM_MAX:
            return q.max_size if q is not None else 0
        if offset == QUEUE_READY:
            return int(q.ready) if q is not None else 0
        if offset == INTERRUPT_STATUS:
            return self.interrupt_status
        if offset == STATUS:
            return d.status
        if offset == CONFIG_GENERATION:
            return d.config_generation
        if offset in _ADDR_REGS and q is not None:
            attr, shift = _ADDR_REGS[offset]
            return (getattr(q, attr) >> shift) & 0xFFFFFFFF
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        d = self.device
        if offset >= CONFIG:
            with d.lock:
                d.write_config(offset - CONFIG, size, value)
            return
        if size != 4:
            return
        if offset == QUEUE_NOTIFY:
            d.kick(value & 0xFFFF)
        elif offset == DEVICE_FEATURES_SEL:
            self.device_features_sel = value
        elif offset == DRIVER_FEATURES_SEL:
            self.driver_features_sel = value
        elif offset == DRIVER_FEATURES:
            with d.lock:
                d.set_driver_word(self.driver_features_sel, value)
        elif offset == QUEUE_SEL:
            self.queue_sel = value
        elif offset == INTERRUPT_ACK:
            with self._lock:
                self.interrupt_status &= ~value
        elif offset == STATUS:
            d.set_status(value)
            if value == 0:
                with self._lock:
                    self.interrupt_status = 0
        else:
            self._queue_write(offset, value)

    def _queue_write(self, offset: int, value: int) -> None:
        q = self._queue()
        if q is None:
            return
        with self.device.lock:
            if offset == QUEUE_READY:
                q.ready = bool(value & 1)
            elif q.ready:
                return
            elif offset == QUEUE_NUM:
                q.size = value
            elif offset in _ADDR_REGS:
                attr, shift = _ADDR_REGS[offset]
                keep = getattr(q, attr) & ~(0xFFFFFFFF << shift)
                setattr(q, attr, keep | (value & 0xFFFFFFFF) << shift)

    def close(self) -> None:
        if self.vm is not None:
            for fd, idx in self._ioeventfds:
                try:
                    self.vm.ioeventfd(fd, self.base + QUEUE_NOTIFY, 4, datamatch=idx, deassign=True)
                except (OSError, KvmkitError) as exc:
                    log.warning("%s: ioeventfd deassign failed: %s", self.device.name, exc)
            self._ioeventfds = []
            if self._irqfd is not None:
                try:
                    self.vm.irqfd(self._irqfd, self.gsi, deassign=True)
                except (OSError, KvmkitError):
                    pass
                os.close(self._irqfd)
                self._irqfd = None

    def reset(self) -> None:
        with self._lock:
            self.interrupt_status = 0
        self.device_features_sel = self.driver_features_sel = self.queue_sel = 0

    def save_state(self) -> dict:
        return {"isr": self.interrupt_status, "dfsel": self.device_features_sel,
                "drfsel": self.driver_features_sel, "qsel": self.queue_sel}

    def load_state(self, state: dict) -> None:
        self.interrupt_status = state["isr"]
        self.device_features_sel, self.driver_features_sel = state["dfsel"], state["drfsel"]
        self.queue_sel = state["qsel"]
