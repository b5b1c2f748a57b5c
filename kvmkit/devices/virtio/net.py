"""virtio-net (virtio 1.2 §5.1) on a tap device.

The tap speaks ``virtio_net_hdr_v1`` (IFF_VNET_HDR, 12 bytes), the same
header the guest puts in front of every frame, so transmit is one
``writev`` of the guest's buffers and receive one ``readv`` into them: no
copies, and checksum/TSO offloads pass through in both directions.
Receive waits on the tap only while the guest has buffers posted.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import select
import struct
from typing import Any

from kvmkit.devices.virtio import iov
from kvmkit.devices.virtio.constants import DeviceId, bit
from kvmkit.devices.virtio.device import VirtioDevice
from kvmkit.devices.virtio.queue import Virtqueue
from kvmkit.memory.guest_memory import GuestMemory
from kvmkit.net.tap import TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, VNET_HDR_SIZE, Tap

log = logging.getLogger(__name__)

F_CSUM, F_GUEST_CSUM, F_MAC = 0, 1, 5
F_GUEST_TSO4, F_GUEST_TSO6, F_GUEST_ECN = 7, 8, 9
F_HOST_TSO4, F_HOST_TSO6, F_HOST_ECN = 11, 12, 13
F_STATUS = 16
S_LINK_UP = 1
RX, TX = 0, 1
BATCH = 64                 # frames per pass before checking the other queue


def default_mac(seed: str) -> bytes:
    """A stable, locally administered MAC in QEMU's 52:54:00 range."""
    return b"\x52\x54\x00" + hashlib.sha256(seed.encode()).digest()[:3]


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


class VirtioNet(VirtioDevice):
    device_id = DeviceId.NET
    queue_sizes = (256, 256)
    kind = "virtio-net"

    def __init__(self, memory: GuestMemory, name: str, tap: Tap, mac: bytes | None = None) -> None:
        self.tap = tap
        self.mac = mac or default_mac(tap.name)
        self.counters = {"rx_packets": 0, "rx_bytes": 0, "tx_packets": 0, "tx_bytes": 0, "tx_dropped": 0}
        self._polling_tap = False
        super().__init__(memory, name)

    def device_features(self) -> int:
        f = bit(F_MAC) | bit(F_STATUS)
        if self.tap.vnet_hdr:
            f |= (bit(F_CSUM) | bit(F_GUEST_CSUM) | bit(F_GUEST_TSO4) | bit(F_GUEST_TSO6) |
                  bit(F_GUEST_ECN) | bit(F_HOST_TSO4) | bit(F_HOST_TSO6) | bit(F_HOST_ECN))
        return f

    def config_bytes(self) -> bytes:
        return self.mac + struct.pack("<HHH", S_LINK_UP, 1, 1500)

    def on_activate(self) -> None:
        f = self.driver_features
        offload = 0
        if f & bit(F_GUEST_CSUM):
            offload |= TUN_F_CSUM
            if f & bit(F_GUEST_TSO4):
                offload |= TUN_F_TSO4
            if f & bit(F_GUEST_TSO6):
                offload |= TUN_F_TSO6
            if f & bit(F_GUEST_ECN) and offload & (TUN_F_TSO4 | TUN_F_TSO6):
                offload |= TUN_F_TSO_ECN      # ECN needs TSO (virtio 1.2 §5.1.3.1); the tap refuses it alone
        if self.tap.vnet_hdr:
            self.tap.set_offload(offload)
        self._poll_tap(True)

    def on_reset(self) -> None:
        self._poll_tap(False)

    def _poll_tap(self, on: bool) -> None:
        if on != self._polling_tap and self.tap.fd >= 0:
            if on:
                self.io.add(self.tap.fd, self._on_tap, select.EPOLLIN)
            else:
                self.io.remove(self.tap.fd)
            self._polling_tap = on

    def _on_tap(self) -> None:
        with self.lock:
            if self.running and self.queues[RX].active:
                self._receive(self.queues[RX])

    def process_queue(self, q: Virtqueue) -> None:
        if q.index == TX:
            self._transmit(q)
        else:
            self._receive(q)

    def _transmit(self, q: Virtqueue) -> None:
        while True:
            q.disable_notify()
            while (chain := q.pop()) is not None:
                size = chain.readable_len
                if size < VNET_HDR_SIZE or chain.writable:
                    self.counters["tx_dropped"] += 1
                else:
                    views = chain.readable if self.tap.vnet_hdr else _strip(chain.readable, VNET_HDR_SIZE)
                    try:
                        os.writev(self.tap.fd, views)
                        self.counters["tx_packets"] += 1
                        self.counters["tx_bytes"] += size - VNET_HDR_SIZE
                    except OSError as exc:
                        self.counters["tx_dropped"] += 1
                        if exc.errno not in (errno.EAGAIN, errno.EIO, errno.EINVAL):
                            log.warning("%s: tap write failed: %s", self.name, exc)
                q.push(chain.head, 0)
            if not q.enable_notify():
                break
        self.interrupt(q)

    def _receive(self, q: Virtqueue) -> None:
        """Move frames from the tap into posted buffers until either runs out."""
        pushed = 0
        while True:
            chain = q.pop()
            if chain is None:
                # Out of buffers: stop polling the tap; the guest's kick re-enables it.
                if q.enable_notify():
                    continue
                self._poll_tap(False)
                break
            if chain.writable_len < VNET_HDR_SIZE:
                q.push(chain.head, 0)
                continue
            views = chain.writable if self.tap.vnet_hdr else _strip(chain.writable, VNET_HDR_SIZE)
            try:
                n = os.readv(self.tap.fd, views)
            except BlockingIOError:
                q.unpop()
                q.disable_notify()
                self._poll_tap(True)
                break
            except OSError as exc:
                q.unpop()
                log.warning("%s: tap read failed: %s", self.name, exc)
                break
            if not self.tap.vnet_hdr:
                _zero(chain.writable, VNET_HDR_SIZE)
                n += VNET_HDR_SIZE
            _set_num_buffers(chain.writable)
            q.push(chain.head, n)
            pushed += 1
            self.counters["rx_packets"] += 1
            self.counters["rx_bytes"] += n - VNET_HDR_SIZE
            if pushed % BATCH == 0:
                self.interrupt(q)
        self.interrupt(q)

    def close_backend(self) -> None:
        self._poll_tap(False)
        self.tap.close()

    def query(self) -> dict[str, Any]:
        info = super().query()
        info.update({"tap": self.tap.name, "mac": format_mac(self.mac), **self.counters})
        return info


def _strip(views: list[memoryview], n: int) -> list[memoryview]:
    return iov.split(views, n)[1]


def _zero(views: list[memoryview], n: int) -> None:
    iov.scatter(views, bytes(n))


def _set_num_buffers(views: list[memoryview]) -> None:
    """num_buffers (header bytes 10-11) is 1 without MRG_RXBUF; the tap leaves it alone."""
    head, _ = iov.split(views, VNET_HDR_SIZE)
    if iov.total(head) == VNET_HDR_SIZE:
        iov.scatter(iov.split(head, 10)[1], b"\x01\x00")
