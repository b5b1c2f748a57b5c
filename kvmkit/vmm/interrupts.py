"""Interrupt delivery through KVM's in-kernel irqchip.

Legacy lines go through ``KVM_IRQ_LINE``.  MSI vectors get a GSI of their own
in the routing table (``KVM_SET_GSI_ROUTING`` replaces the whole table, so the
default PIC/IOAPIC routes are re-stated each time) and an irqfd, so that a
device thread signals the guest with one ``eventfd`` write and no ioctl.
"""

from __future__ import annotations

import os
import threading

from kvmkit.kvm import constants as K
from kvmkit.kvm import structs as S
from kvmkit.kvm.vm import Vm, eventfd

IOAPIC_PINS = 24
FIRST_MSI_GSI = IOAPIC_PINS


class KvmIrqLine:
    def __init__(self, vm: Vm, gsi: int) -> None:
        self._vm = vm
        self.gsi = gsi
        self.level = False

    def set_level(self, high: bool) -> None:
        if high != self.level:
            self.level = high
            self._vm.irq_line(self.gsi, int(high))

    def pulse(self) -> None:
        self._vm.irq_line(self.gsi, 1)
        self._vm.irq_line(self.gsi, 0)
        self.level = False


class KvmMsiVector:
    def __init__(self, ctl: "KvmInterruptController", gsi: int) -> None:
        self._ctl = ctl
        self.gsi = gsi
        self.address = 0
        self.data = 0
        self.masked = True
        self._fd = eventfd()
        self._irqfd = False

    @property
    def eventfd(self) -> int:
        return self._fd

    def configure(self, address: int, data: int, masked: bool = False) -> None:
        changed = (address, data) != (self.address, self.data)
        self.address, self.data, self.masked = address, data, masked
        if changed or not self._irqfd:
            self._ctl._commit_routes()
            if not self._irqfd and address:
                self._ctl.vm.irqfd(self._fd, self.gsi)
                self._irqfd = True

    def trigger(self) -> None:
        if not self.masked and self.address:
            os.eventfd_write(self._fd, 1)

    def release(self) -> None:
        if self._irqfd:
            self._ctl.vm.irqfd(self._fd, self.gsi, deassign=True)
            self._irqfd = False
        self._ctl._release(self)
        os.close(self._fd)


class KvmInterruptController:
    """Implements :class:`kvmkit.devices.irq.InterruptController` on a Vm
    that has an in-kernel irqchip."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self._lock = threading.Lock()
        self._lines: dict[int, KvmIrqLine] = {}
        self._msi: dict[int, KvmMsiVector] = {}
        self._next_gsi = FIRST_MSI_GSI

    def irq_line(self, gsi: int) -> KvmIrqLine:
        with self._lock:
            if gsi not in self._lines:
                self._lines[gsi] = KvmIrqLine(self.vm, gsi)
            return self._lines[gsi]

    def allocate_msi(self) -> KvmMsiVector:
        with self._lock:
            gsi = self._next_gsi
            self._next_gsi += 1
            v = KvmMsiVector(self, gsi)
            self._msi[gsi] = v
            return v

    def signal_msi(self, address: int, data: int) -> int:
        return self.vm.signal_msi(address, data)

    def _release(self, v: KvmMsiVector) -> None:
        with self._lock:
            self._msi.pop(v.gsi, None)
        self._commit_routes()

    def _commit_routes(self) -> None:
        with self._lock:
            entries = default_routes()
            for v in self._msi.values():
                if v.address:
                    e = S.kvm_irq_routing_entry()
                    e.gsi, e.type = v.gsi, K.IRQ_ROUTING_MSI
                    e.u.msi.address_lo = v.address & 0xFFFFFFFF
                    e.u.msi.address_hi = v.address >> 32
                    e.u.msi.data = v.data
                    entries.append(e)
            self.vm.set_gsi_routing(entries)


def default_routes() -> list[S.kvm_irq_routing_entry]:
    """KVM's default table: GSI 0-15 to the PICs and IOAPIC, 16-23 to the IOAPIC."""
    entries = []
    for gsi in range(IOAPIC_PINS):
        if gsi < 16:
            e = S.kvm_irq_routing_entry()
            e.gsi, e.type = gsi, K.IRQ_ROUTING_IRQCHIP
            e.u.irqchip.irqchip = K.IRQCHIP_PIC_MASTER if gsi < 8 else K.IRQCHIP_PIC_SLAVE
            e.u.irqchip.pin = gsi % 8
            entries.append(e)
        e = S.kvm_irq_routing_entry()
        e.gsi, e.type = gsi, K.IRQ_ROUTING_IRQCHIP
        e.u.irqchip.irqchip = K.IRQCHIP_IOAPIC
        e.u.irqchip.pin = gsi
        entries.append(e)
    return entries
