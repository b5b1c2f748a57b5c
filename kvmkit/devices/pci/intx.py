"""Legacy PCI interrupts (INTx): how a function's Interrupt Pin reaches an
IOAPIC input, so that guests without MSI (``pci=nomsi``, kernels built
without ``CONFIG_PCI_MSI``, drivers that never enable MSI-X) still get their
interrupts.

Bus 0 has up to four INTx lines, each a level-triggered IOAPIC input.  Pin
``p`` (0-3 for INTA#-INTD#) of slot ``s`` goes to line ``(s + p) % n``: the
swizzle real boards use, so single-pin devices in neighbouring slots land on
different lines and a driver rarely has to look at an interrupt that is not
its own (each look is a VM exit).  :meth:`IntxRouter.routes` is the one table
the PCI configuration space (Interrupt Line), the MP table and the ACPI
``_PRT`` are all written from, so the three cannot disagree.

Polarity: PCI's INTx# is active low and the firmware tables say so (the ACPI
``_PRT`` GSI form implies level/active-low).  KVM's in-kernel IOAPIC does not
apply the programmed polarity to ``KVM_IRQ_LINE``: level 1 is "asserted"
either way (tests/devices/test_intx.py checks this against /dev/kvm), so the
VMM drives 1 = asserted whatever the guest programs.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

from kvmkit.devices.irq import InterruptController, IrqLine

PINS = 4                                # INTA# .. INTD#


@dataclass(frozen=True)
class IntxRoute:
    """Pin ``pin`` (0 = INTA#) of bus-0 slot ``slot`` is wired to IOAPIC input ``gsi``."""

    slot: int
    pin: int
    gsi: int


class SharedIntx:
    """One level-triggered line shared by several functions (wire-OR): it is
    high while any of them asserts it.  The line is driven under the lock, so
    two functions changing their level at once can never leave it high with
    nobody asserting (an interrupt storm the guest would disable the IRQ for)."""

    def __init__(self, line: IrqLine) -> None:
        self._line = line
        self._asserted: set[int] = set()
        self._lock = threading.Lock()

    def pin(self, owner: object) -> "IntxPin":
        return IntxPin(self, id(owner))

    def _set(self, key: int, high: bool) -> None:
        with self._lock:
            before = bool(self._asserted)
            (self._asserted.add if high else self._asserted.discard)(key)
            after = bool(self._asserted)
            if before != after:
                self._line.set_level(after)

    @property
    def level(self) -> bool:
        return bool(self._asserted)


class IntxPin:
    """One function's connection to a :class:`SharedIntx` (an :class:`IrqLine`)."""

    def __init__(self, shared: SharedIntx, key: int) -> None:
        self._shared, self._key = shared, key

    def set_level(self, high: bool) -> None:
        self._shared._set(self._key, high)

    def pulse(self) -> None:
        self.set_level(True)
        self.set_level(False)


class IntxRouter:
    """The INTx lines of bus 0, one per GSI in ``gsis`` (1 to 4 of them)."""

    def __init__(self, irq: InterruptController, gsis: Sequence[int]) -> None:
        if not 1 <= len(gsis) <= PINS or len(set(gsis)) != len(gsis):
            raise ValueError(f"PCI INTx needs 1-{PINS} distinct GSIs, not {list(gsis)}")
        self.gsis = tuple(gsis)
        self._lines = [SharedIntx(irq.irq_line(g)) for g in self.gsis]

    def _index(self, slot: int, pin: int) -> int:
        if not 0 <= pin < PINS:
            raise ValueError(f"INTx pin {pin} (0-3 for INTA#-INTD#)")
        return (slot + pin) % len(self.gsis)

    def gsi(self, slot: int, pin: int = 0) -> int:
        return self.gsis[self._index(slot, pin)]

    def connect(self, slot: int, owner: object, pin: int = 0) -> IntxPin:
        return self._lines[self._index(slot, pin)].pin(owner)

    def routes(self, slots: Sequence[int]) -> tuple[IntxRoute, ...]:
        """Every pin of every slot in ``slots``, for the firmware tables."""
        return tuple(IntxRoute(s, p, self.gsi(s, p)) for s in sorted(slots) for p in range(PINS))
