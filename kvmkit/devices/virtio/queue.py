"""Split virtqueues (virtio 1.2 §2.7), read and written in guest memory.

The rings are guest memory the guest keeps writing while we read, and every
index and address in them is untrusted.  :meth:`Virtqueue.pop` walks one
descriptor chain with hard bounds (an index past the table, more links than
the table holds, a nested or empty indirect table, a readable buffer after a
writable one, a range outside RAM) and raises :class:`ChainError` instead of
looping, reading outside guest RAM or crashing; the device then sets
DEVICE_NEEDS_RESET.  Buffers come back as zero-copy memoryviews so I/O goes
straight between the backend and guest RAM.

Notification suppression: with ``VIRTIO_F_EVENT_IDX`` the device publishes
``avail_event`` only when it is about to sleep, and interrupts only when the
driver's ``used_event`` was crossed; without it the ring flags are used.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field
from typing import Any

from kvmkit.devices.virtio.constants import (
    AVAIL_F_NO_INTERRUPT, DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, MAX_QUEUE_SIZE,
    NO_VECTOR, USED_F_NO_NOTIFY)
from kvmkit.errors import GuestMemoryError
from kvmkit.memory.guest_memory import GuestMemory

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")
MAX_INDIRECT = 4096          # descriptors in one indirect table (Linux uses <= queue size)

_fence_lock = threading.Lock()


def memory_fence() -> None:
    """A full store-load barrier: taking a lock is a locked instruction on
    x86, which the EVENT_IDX protocol needs between publishing an index and
    reading the other side's (otherwise a kick or an interrupt can be lost)."""
    _fence_lock.acquire()
    _fence_lock.release()


class ChainError(Exception):
    """A malformed ring or descriptor chain: the driver is broken or hostile."""


def guest_views(memory: GuestMemory, gpa: int, length: int) -> list[memoryview]:
    """Views covering ``gpa..gpa+length``, split where RAM regions meet.

    Raises :class:`ChainError` if any byte is outside guest RAM.
    """
    try:
        return [memory.view(gpa, length)]
    except GuestMemoryError:
        pass
    out: list[memoryview] = []
    end = gpa + length
    for r in memory.regions:           # adjacent regions only; a gap is an error
        if r.guest_phys_addr <= gpa < r.end:
            n = min(end, r.end) - gpa
            out.append(memory.view(gpa, n))
            gpa += n
            if gpa == end:
                return out
    raise ChainError(f"buffer {end - length:#x}+{length:#x} is outside guest RAM")


@dataclass
class Chain:
    """One request: the head index and its device-readable then device-writable buffers."""

    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)

    @property
    def readable_len(self) -> int:
        return sum(len(v) for v in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(len(v) for v in self.writable)


class Virtqueue:
    """One split virtqueue: driver-set addresses plus the device's indices."""

    def __init__(self, memory: GuestMemory, index: int, max_size: int = 256) -> None:
        self.memory = memory
        self.index = index
        self.max_size = max_size
        self.event_idx = False
        self.indirect = False
        self.notify_fd: int | None = None     # eventfd the transport kicks (ioeventfd)
        self.reset()

    def reset(self) -> None:
        self.size = self.max_size
        self.ready = False
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.msix_vector = NO_VECTOR
        self.last_avail = 0
        self.used_idx = 0
        self._signalled = 0
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None
        self._used: memoryview | None = None

    # -- setup -------------------------------------------------------------
    def activate(self, features: int) -> None:
        """Check the driver's ring addresses and map them (at DRIVER_OK / QueueReady)."""
        from kvmkit.devices.virtio.constants import F_EVENT_IDX, F_INDIRECT_DESC
        self.event_idx = bool(features >> F_EVENT_IDX & 1)
        self.indirect = bool(features >> F_INDIRECT_DESC & 1)
        n = self.size
        if n == 0 or n & (n - 1) or n > min(self.max_size, MAX_QUEUE_SIZE):
            raise ChainError(f"queue {self.index}: size {n} is not a power of two <= {self.max_size}")
        if self.desc_addr % 16 or self.avail_addr % 2 or self.used_addr % 4:
            raise ChainError(f"queue {self.index}: misaligned ring address")
        try:
            self._desc = self.memory.view(self.desc_addr, 16 * n)
            self._avail = self.memory.view(self.avail_addr, 6 + 2 * n)
            self._used = self.memory.view(self.used_addr, 6 + 8 * n)
        except GuestMemoryError as exc:
            raise ChainError(f"queue {self.index}: ring outside guest RAM: {exc}") from None

    @property
    def active(self) -> bool:
        return self._desc is not None

    def deactivate(self) -> None:
        self._desc = self._avail = self._used = None

    # -- ring indices ------------------------------------------------------
    def avail_idx(self) -> int:
        return _U16.unpack_from(self._avail, 2)[0]

    def has_work(self) -> bool:
        return self._avail is not None and self.avail_idx() != self.last_avail

    def pop(self) -> Chain | None:
        """The next available chain, or None; raises ChainError on a bad ring."""
        if self._avail is None:
            return None
        avail = self.avail_idx()
        pending = (avail - self.last_avail) & 0xFFFF
        if pending == 0:
            return None
        if pending > self.size:
            raise ChainError(f"queue {self.index}: avail index {avail} runs {pending} ahead "
                             f"of {self.last_avail} (size {self.size})")
        head = _U16.unpack_from(self._avail, 4 + 2 * (self.last_avail % self.size))[0]
        chain = self._walk(head)
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        return chain

    def unpop(self) -> None:
        """Give back the last popped chain (e.g. net rx found no packet after all)."""
        self.last_avail = (self.last_avail - 1) & 0xFFFF

    def _walk(self, head: int) -> Chain:
        table = self._desc
        n = self.size
        if head >= n:
            raise ChainError(f"queue {self.index}: head {head} >= size {n}")
        chain = Chain(head)
        idx, links, in_indirect = head, 0, False
        while True:
            if idx >= n:
                raise ChainError(f"queue {self.index}: descriptor {idx} >= table size {n}")
            addr, length, flags, nxt = _DESC.unpack_from(table, 16 * idx)
            if flags & DESC_F_INDIRECT:
                if not self.indirect or in_indirect or flags & DESC_F_NEXT:
                    raise ChainError(f"queue {self.index}: indirect descriptor not allowed here")
                if length == 0 or length % 16 or length // 16 > MAX_INDIRECT:
                    raise ChainError(f"queue {self.index}: indirect table of {length} bytes")
                views = guest_views(self.memory, addr, length)
                table = views[0] if len(views) == 1 else memoryview(b"".join(views))
                n, idx, links, in_indirect = length // 16, 0, 0, True
                continue
            links += 1
            if links > n:
                raise ChainError(f"queue {self.index}: descriptor chain loops")
            if length:
                bufs = guest_views(self.memory, addr, length)
                if flags & DESC_F_WRITE:
                    chain.writable.extend(bufs)
                elif chain.writable:
                    raise ChainError(f"queue {self.index}: readable buffer after a writable one")
                else:
                    chain.readable.extend(bufs)
            if not flags & DESC_F_NEXT:
                return chain
            idx = nxt

    def push(self, head: int, written: int) -> None:
        """Return a chain to the driver with ``written`` bytes filled in."""
        used = self._used
        if used is None:
            return
        _USED_ELEM.pack_into(used, 4 + 8 * (self.used_idx % self.size), head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        _U16.pack_into(used, 2, self.used_idx)      # x86 keeps store order: entry before index

    # -- notification suppression -----------------------------------------
    def disable_notify(self) -> None:
        """Ask the driver not to kick while we are draining the ring."""
        if self._used is not None and not self.event_idx:
            _U16.pack_into(self._used, 0, USED_F_NO_NOTIFY)

    def enable_notify(self) -> bool:
        """Ask for a kick on the next buffer; True if work arrived meanwhile."""
        if self._used is None:
            return False
        if self.event_idx:
            _U16.pack_into(self._used, 4 + 8 * self.size, self.last_avail)
        else:
            _U16.pack_into(self._used, 0, 0)
        memory_fence()
        return self.avail_idx() != self.last_avail

    def needs_interrupt(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last one."""
        if self._avail is None:
            return False
        new, old = self.used_idx, self._signalled
        if new == old:
            return False
        self._signalled = new
        if self.event_idx:
            memory_fence()
            event = _U16.unpack_from(self._avail, 4 + 2 * self.size)[0]
            return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF
        return not _U16.unpack_from(self._avail, 0)[0] & AVAIL_F_NO_INTERRUPT

    # -- save / restore ----------------------------------------------------
    def save_state(self) -> dict[str, Any]:
        return {"size": self.size, "ready": self.ready, "desc": self.desc_addr,
                "avail": self.avail_addr, "used": self.used_addr, "vector": self.msix_vector,
                "last_avail": self.last_avail, "used_idx": self.used_idx,
                "signalled": self._signalled}

    def load_state(self, s: dict[str, Any]) -> None:
        self.reset()
        self.size, self.ready = s["size"], s["ready"]
        self.desc_addr, self.avail_addr, self.used_addr = s["desc"], s["avail"], s["used"]
        self.msix_vector = s["vector"]
        self.last_avail, self.used_idx, self._signalled = s["last_avail"], s["used_idx"], s["signalled"]
