"""Coalesced port writes: registers whose writes need no immediate answer
(the UART's transmit register while the guest polls it) go into a ring that
KVM fills without an exit; we replay the ring, in order, before handling any
exit and from a flusher thread so output is never held back for long.

Reads always exit, and every exit drains the ring first, so the guest can
never observe a write that has not been applied.
"""

from __future__ import annotations

import ctypes
import mmap
import threading

from kvmkit.kvm.structs import kvm_coalesced_mmio

ENTRY = ctypes.sizeof(kvm_coalesced_mmio)
FLUSH_PERIOD = 0.02


class CoalescedWrites:
    def __init__(self, vm, ring: memoryview, pio_bus, mmio_bus) -> None:
        self.vm = vm
        self.ring = ring
        self.pio_bus = pio_bus
        self.mmio_bus = mmio_bus
        self.capacity = (mmap.PAGESIZE - 8) // ENTRY
        self.lock = threading.Lock()
        self.zones: set[tuple[int, int, bool]] = set()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None
        self.replayed = 0

    def drain(self) -> None:
        """Replay queued writes in order (any thread)."""
        if self.ring[0:4] == self.ring[4:8]:
            return
        with self.lock:
            r = self.ring
            first = int.from_bytes(r[0:4], "little")
            last = int.from_bytes(r[4:8], "little")
            while first != last:
                e = kvm_coalesced_mmio.from_buffer_copy(r, 8 + first * ENTRY)
                value = int.from_bytes(bytes(e.data[: e.len]), "little")
                (self.pio_bus if e.pio else self.mmio_bus).write(e.phys_addr, e.len, value)
                first = (first + 1) % self.capacity
                r[0:4] = first.to_bytes(4, "little")
                self.replayed += 1

    def set_zone(self, addr: int, size: int, pio: bool, enabled: bool) -> None:
        zone = (addr, size, pio)
        if enabled == (zone in self.zones):
            return
        self.drain()
        if enabled:
            self.vm.register_coalesced_mmio(addr, size, pio)
            self.zones.add(zone)
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="coalesced-flush", daemon=True)
                self._flusher.start()
        else:
            self.vm.unregister_coalesced_mmio(addr, size, pio)
            self.zones.discard(zone)
        self.drain()

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_PERIOD):
            try:
                self.drain()
            except Exception:
                return

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=1)
        self.drain()
