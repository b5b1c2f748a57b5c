"""virtio-console (virtio 1.2 §5.3), single port: the guest's ``hvc0``.

Output the guest writes goes to ``out_fd`` (the VMM's stdout or a log
file); input comes from ``in_fd`` when given, or from :meth:`feed` (the
VMM's stdin multiplexer, a test).  Receive buffers the guest posts are
held until there is input for them.
"""

from __future__ import annotations

import collections
import logging
import os
import struct
from typing import Any

from kvmkit.devices.virtio import iov
from kvmkit.devices.virtio.constants import DeviceId
from kvmkit.devices.virtio.device import VirtioDevice
from kvmkit.devices.virtio.queue import Chain, Virtqueue
from kvmkit.memory.guest_memory import GuestMemory

log = logging.getLogger(__name__)
RX, TX = 0, 1


class VirtioConsole(VirtioDevice):
    device_id = DeviceId.CONSOLE
    queue_sizes = (64, 64)
    kind = "virtio-console"

    def __init__(self, memory: GuestMemory, name: str = "console0", out_fd: int | None = 1,
                 in_fd: int | None = None, cols: int = 80, rows: int = 25,
                 owns_out: bool = False) -> None:
        self.out_fd, self.in_fd, self.owns_out = out_fd, in_fd, owns_out
        self.cols, self.rows = cols, rows
        self._pending = bytearray()
        self._rx: collections.deque[Chain] = collections.deque()
        self.output = bytearray() if out_fd is None else None    # captured when there is no fd
        super().__init__(memory, name)
        if in_fd is not None:
            self.io.add(in_fd, self._on_input)

    def config_bytes(self) -> bytes:
        return struct.pack("<HHII", self.cols, self.rows, 1, 0)

    def handle_chain(self, queue: Virtqueue, chain: Chain) -> int | None:
        if queue.index == RX:
            self._rx.append(chain)
            return None
        data = b"".join(bytes(v) for v in chain.readable)
        if self.output is not None:
            self.output += data
        elif self.out_fd is not None and data:
            try:
                os.write(self.out_fd, data)
            except OSError as exc:
                log.warning("%s: output dropped: %s", self.name, exc)
        return 0

    def process_queue(self, q: Virtqueue) -> None:
        super().process_queue(q)
        if q.index == RX:
            self._deliver()

    def feed(self, data: bytes) -> None:
        """Queue input for the guest (any thread)."""
        with self.lock:
            self._pending += data
            if self.running:
                self._deliver()

    def _on_input(self) -> None:
        try:
            data = os.read(self.in_fd, 4096)
        except BlockingIOError:
            return
        if not data:
            self.io.remove(self.in_fd)
            return
        self.feed(data)

    def _deliver(self) -> None:
        q = self.queues[RX]
        pushed = False
        while self._pending and self._rx:
            chain = self._rx.popleft()
            n = iov.scatter(chain.writable, self._pending)
            del self._pending[:n]
            q.push(chain.head, n)
            pushed = True
        if pushed:
            self.interrupt(q)

    def on_reset(self) -> None:
        self._rx.clear()

    def close_backend(self) -> None:
        if self.owns_out and self.out_fd is not None:
            os.close(self.out_fd)
            self.out_fd = None

    def device_state(self) -> dict[str, Any]:
        # Held rx chains are re-read from the ring after restore: rewind to them.
        return {"pending": bytes(self._pending).hex(), "held": len(self._rx)}

    def load_device_state(self, state: dict[str, Any]) -> None:
        self._pending = bytearray.fromhex(state.get("pending", ""))
        self._rx.clear()
        q = self.queues[RX]
        q.last_avail = (q.last_avail - state.get("held", 0)) & 0xFFFF
