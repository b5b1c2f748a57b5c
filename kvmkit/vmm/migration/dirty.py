"""Which guest pages changed: KVM's dirty log for the guest's own stores,
plus the VMM's own writes (virtio rings and buffers, the syscall trap),
which KVM never sees because they go through the host mapping.

Several consumers may track at once (a live migration while a diff
snapshot waits for its next save): each :class:`DirtySet` accumulates what
changed since *it* last looked, so one reading KVM's log (which clears it)
never hides pages from another.
"""

from __future__ import annotations

import ctypes
import threading
from typing import TYPE_CHECKING

from kvmkit.kvm.constants import MEM_LOG_DIRTY_PAGES

if TYPE_CHECKING:
    from kvmkit.vmm.machine import Machine

PAGE_SHIFT = 12


def _bits(bitmap: bytearray, first_page: int, out: set[int]) -> None:
    words = memoryview(bitmap).cast("Q")
    for i, w in enumerate(words):
        if w:
            base = first_page + i * 64
            while w:
                low = w & -w
                out.add(base + low.bit_length() - 1)
                w ^= low


class DirtySet:
    """One consumer's view: pages changed since its last :meth:`take`."""

    def __init__(self, tracker: "DirtyTracker") -> None:
        self._tracker = tracker
        self.pages: set[int] = set()

    def take(self) -> set[int]:
        """Collect now and return (and forget) what changed since the last take."""
        return self._tracker.collect(self)

    def close(self) -> None:
        self._tracker.release(self)


class DirtyTracker:
    """Dirty logging on every RAM slot while at least one consumer tracks."""

    def __init__(self, machine: "Machine") -> None:
        self._machine = machine
        self._lock = threading.Lock()
        self._consumers: list[DirtySet] = []

    def _set_logging(self, on: bool) -> None:
        m = self._machine
        for r in m.memory.regions:
            addr = ctypes.addressof(ctypes.c_char.from_buffer(r.mapping))
            m.vm.set_user_memory_region(r.slot, r.guest_phys_addr, r.size, addr,
                                        MEM_LOG_DIRTY_PAGES if on else 0)

    def open(self) -> DirtySet:
        with self._lock:
            d = DirtySet(self)
            if not self._consumers:
                self._set_logging(True)
                self._machine.memory.dirty_pages = set()
            else:
                self._gather_locked()
            self._consumers.append(d)
            return d

    def release(self, d: DirtySet) -> None:
        with self._lock:
            if d not in self._consumers:
                return
            self._consumers.remove(d)
            if not self._consumers:
                self._machine.memory.dirty_pages = None
                try:
                    self._set_logging(False)
                except OSError:
                    pass                # the VM is being torn down

    def _gather_locked(self) -> None:
        m = self._machine
        fresh: set[int] = set()
        vmm, m.memory.dirty_pages = m.memory.dirty_pages, set()
        if vmm:
            fresh |= vmm
        for d in m.virtio_devices:        # rings mapped once at activation: written without a view()
            for q in getattr(d, "queues", ()):
                if getattr(q, "active", False):
                    start, end = q.used_addr, q.used_addr + 8 + 8 * q.size
                    fresh.update(range(start >> PAGE_SHIFT, ((end - 1) >> PAGE_SHIFT) + 1))
        for r in m.memory.regions:
            npages = r.size >> PAGE_SHIFT
            _bits(m.vm.get_dirty_log(r.slot, npages), r.guest_phys_addr >> PAGE_SHIFT, fresh)
        for c in self._consumers:
            c.pages |= fresh

    def collect(self, d: DirtySet) -> set[int]:
        with self._lock:
            self._gather_locked()
            out, d.pages = d.pages, set()
            return out
