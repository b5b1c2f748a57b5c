"""What a device needs from the machine it is plugged into.

The VMM builds one :class:`DeviceContext` and hands it to each device
factory, so devices depend on these few interfaces rather than on the VMM.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from kvmkit.devices.bus import Bus
from kvmkit.devices.irq import InterruptController
from kvmkit.memory.guest_memory import GuestMemory


class MmioAllocator:
    """Hands out non-overlapping, aligned guest-physical MMIO windows above RAM."""

    def __init__(self, start: int, end: int) -> None:
        self._next = start
        self._end = end
        self._lock = threading.Lock()

    def allocate(self, size: int, align: int = 0x1000) -> int:
        with self._lock:
            base = (self._next + align - 1) & ~(align - 1)
            if base + size > self._end:
                raise MemoryError(f"MMIO window exhausted allocating {size:#x} bytes")
            self._next = base + size
            return base


@dataclass
class DeviceContext:
    memory: GuestMemory
    pio_bus: Bus
    mmio_bus: Bus
    irq: InterruptController
    vm: object                     # kvmkit.kvm.Vm, for ioeventfd/irqfd registration; None in unit tests
    mmio: MmioAllocator
    # ISA IRQs no legacy device uses, then IOAPIC pins 16-23 (as Firecracker does)
    isa_irqs_free: list[int] = field(default_factory=lambda: [5, 9, 10, 11, *range(16, 24)])
    kernel_cmdline: list[str] = field(default_factory=list)  # extra kernel args (virtio_mmio.device=...)
    # A disk's werror/rerror fired: BLOCK_IO_ERROR data (device, operation, action, nospace,
    # reason); the VMM emits the event and pauses the VM for action 'stop'.
    block_error: Callable[[dict[str, Any]], None] | None = None
