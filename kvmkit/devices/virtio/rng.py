"""virtio-rng (virtio 1.2 §5.4): fills the guest's buffers from the host's
``getrandom``.  The guest's hwrng core reads it at probe time, which is what
the end-to-end test watches."""

from __future__ import annotations

import os

from kvmkit.devices.virtio.constants import DeviceId
from kvmkit.devices.virtio.device import VirtioDevice
from kvmkit.devices.virtio.queue import Chain, Virtqueue

MAX_PER_REQUEST = 64 * 1024       # bounds the work one descriptor can ask for


class VirtioRng(VirtioDevice):
    device_id = DeviceId.RNG
    queue_sizes = (64,)
    kind = "virtio-rng"

    def __init__(self, memory, name: str = "rng0") -> None:
        self.bytes_served = 0
        super().__init__(memory, name)

    def handle_chain(self, queue: Virtqueue, chain: Chain) -> int | None:
        done = 0
        for v in chain.writable:
            n = min(len(v), MAX_PER_REQUEST - done)
            if n <= 0:
                break
            v[:n] = os.getrandom(n)
            done += n
        self.bytes_served += done
        return done

    def query(self) -> dict:
        info = super().query()
        info["bytes-served"] = self.bytes_served
        return info
