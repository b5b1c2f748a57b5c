"""virtio-balloon (virtio 1.2 §5.5): the host asks for ``num_pages`` back,
the guest gives page frame numbers on the inflate queue (we drop them with
``madvise(MADV_DONTNEED)``, so the host really gets the memory) and takes
them back on the deflate queue; the stats queue carries the guest's memory
statistics.

Stats follow the spec's dance: the driver's one stats buffer is held by the
device; to ask for fresh numbers the device returns it, and the driver
refills it and sends it back.
"""

from __future__ import annotations

import logging
import mmap
import struct
import threading
from typing import Any

from kvmkit.devices.virtio import iov
from kvmkit.devices.virtio.constants import DeviceId, bit
from kvmkit.devices.virtio.device import VirtioDevice
from kvmkit.devices.virtio.queue import Chain, Virtqueue
from kvmkit.memory.guest_memory import GuestMemory

log = logging.getLogger(__name__)

F_MUST_TELL_HOST, F_STATS_VQ, F_DEFLATE_ON_OOM = 0, 1, 2
INFLATE, DEFLATE, STATS = 0, 1, 2
PAGE = 4096
STAT_NAMES = {0: "swap-in", 1: "swap-out", 2: "major-faults", 3: "minor-faults",
              4: "free-memory", 5: "total-memory", 6: "available-memory", 7: "disk-caches",
              8: "hugetlb-allocations", 9: "hugetlb-failures"}
_STAT = struct.Struct("<HQ")


class VirtioBalloon(VirtioDevice):
    device_id = DeviceId.BALLOON
    queue_sizes = (128, 128, 4)
    kind = "virtio-balloon"

    def __init__(self, memory: GuestMemory, name: str = "balloon0", deflate_on_oom: bool = True) -> None:
        self.deflate_on_oom = deflate_on_oom
        self.num_pages = 0
        self.actual_pages = 0
        self.inflated: set[int] = set()
        self._stats: dict[str, int] = {}
        self._stats_chain: Chain | None = None
        self._stats_event = threading.Event()
        super().__init__(memory, name)

    def device_features(self) -> int:
        return bit(F_STATS_VQ) | bit(F_MUST_TELL_HOST) | (bit(F_DEFLATE_ON_OOM) if self.deflate_on_oom else 0)

    def config_bytes(self) -> bytes:
        return struct.pack("<II", self.num_pages, self.actual_pages)

    def write_config(self, offset: int, size: int, value: int) -> None:
        if offset == 4 and size == 4:
            self.actual_pages = value

    # -- host API ------------------------------------------------------------
    def set_target(self, balloon_bytes: int) -> None:
        """Ask the guest to give back ``balloon_bytes`` (the balloon's size, not the guest's)."""
        pages = max(0, min(balloon_bytes, self.memory.total_size)) // PAGE
        with self.lock:
            self.num_pages = pages
            self.config_changed()

    def set_guest_memory(self, target_bytes: int) -> None:
        """QMP ``balloon value=N`` semantics: leave the guest ``N`` bytes of RAM."""
        self.set_target(max(0, self.memory.total_size - target_bytes))

    def actual(self) -> int:
        """Bytes the guest says it has given back."""
        return self.actual_pages * PAGE

    def guest_memory_size(self) -> int:
        """What QMP's query-balloon calls ``actual``: guest RAM minus the balloon."""
        return self.memory.total_size - self.actual()

    def stats(self, refresh: bool = True, timeout: float = 1.0) -> dict[str, int]:
        """The guest's last memory statistics; with ``refresh``, ask for new ones first."""
        if refresh and self.request_stats():
            self._stats_event.wait(timeout)
        return dict(self._stats)

    def request_stats(self) -> bool:
        with self.lock:
            chain, self._stats_chain = self._stats_chain, None
            if chain is None or not self.running:
                return False
            self._stats_event.clear()
            q = self.queues[STATS]
            q.push(chain.head, 0)
            self.interrupt(q)
            return True

    # -- queues --------------------------------------------------------------
    def handle_chain(self, queue: Virtqueue, chain: Chain) -> int | None:
        if queue.index == STATS:
            raw = iov.gather(chain.readable, chain.readable_len)
            for tag, value in _STAT.iter_unpack(raw[:len(raw) - len(raw) % _STAT.size]):
                self._stats[STAT_NAMES.get(tag, f"tag-{tag}")] = value
            self._stats_chain = chain
            self._stats_event.set()
            return None
        raw = iov.gather(chain.readable, chain.readable_len)
        pfns = struct.unpack(f"<{len(raw) // 4}I", raw[:len(raw) & ~3])
        if queue.index == INFLATE:
            for pfn in pfns:
                self._discard(pfn)
        else:
            self.inflated.difference_update(pfns)
        return 0

    def _discard(self, pfn: int) -> None:
        gpa = pfn * PAGE
        for r in self.memory.regions:
            if r.guest_phys_addr <= gpa and gpa + PAGE <= r.end:
                try:
                    r.mapping.madvise(mmap.MADV_DONTNEED, gpa - r.guest_phys_addr, PAGE)
                except (OSError, ValueError) as exc:
                    log.debug("%s: madvise pfn %#x: %s", self.name, pfn, exc)
                self.inflated.add(pfn)
                return
        log.warning("%s: guest inflated pfn %#x outside RAM; ignored", self.name, pfn)

    def on_reset(self) -> None:
        self._stats_chain = None
        self.actual_pages = 0
        self.inflated.clear()

    def device_state(self) -> dict[str, Any]:
        return {"num_pages": self.num_pages, "actual": self.actual_pages,
                "stats_held": self._stats_chain is not None}

    def load_device_state(self, state: dict[str, Any]) -> None:
        self.num_pages, self.actual_pages = state["num_pages"], state["actual"]
        self._stats_chain = None
        if state.get("stats_held"):
            q = self.queues[STATS]
            q.last_avail = (q.last_avail - 1) & 0xFFFF

    def query(self) -> dict[str, Any]:
        info = super().query()
        info.update({"target": self.num_pages * PAGE, "actual": self.guest_memory_size()})
        return info
