"""How devices raise interrupts, independent of how the VMM delivers them.

A legacy device (UART, RTC, PCI INTx) holds an :class:`IrqLine`; an MSI or
MSI-X capable device asks the :class:`InterruptController` for
:class:`MsiVector` handles.  The KVM-backed implementations live in
``kvmkit.vmm.interrupts`` (in-kernel irqchip, GSI routing, irqfd), so devices
can be unit-tested with a recording controller.
"""

from __future__ import annotations

from typing import Protocol


class IrqLine(Protocol):
    def set_level(self, high: bool) -> None:
        """Level-triggered: hold the line high or low."""

    def pulse(self) -> None:
        """Edge: raise then lower (ISA-style edge interrupt)."""


class MsiVector(Protocol):
    def configure(self, address: int, data: int, masked: bool = False) -> None:
        """Point the vector at the guest's (address, data) pair."""

    def trigger(self) -> None:
        """Send the message (no-op while masked; the caller tracks pending bits)."""

    @property
    def eventfd(self) -> int:
        """An fd whose write triggers the vector in the kernel (irqfd), so
        I/O threads can interrupt the guest without a Python call into KVM."""

    def release(self) -> None: ...


class InterruptController(Protocol):
    def irq_line(self, gsi: int) -> IrqLine: ...
    def allocate_msi(self) -> MsiVector: ...
