"""A guest's virtqueues are untrusted: split rings, descriptor chains
(with indirect tables and EVENT_IDX indices), and each device's requests
(blk, net, console, vsock, balloon).  The input lays out one queue in a
guest RAM of two regions with a hole between them; descriptor addresses are
steered into the buffer area, the indirect area, the hole and past the end,
so the walker and the devices meet every kind of bad address.

Crash: anything escaping ``Virtqueue.pop`` but ChainError; anything at all
escaping a device's kick (devices fail the request or set NEEDS_RESET);
a balloon page recorded outside guest RAM."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import struct
import tempfile

import atheris

from kvmkit.devices.virtio.constants import F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, Status
from kvmkit.devices.virtio.queue import ChainError, Virtqueue
from kvmkit.memory.guest_memory import GuestMemory

from fuzz.harness import target

LOW_END, HIGH_BASE, HIGH_END = 0x40000, 0x50000, 0x60000      # RAM: [0, 256K) and [320K, 384K)
DESC, AVAIL, USED, INDIRECT, BUFFERS = 0x1000, 0x3000, 0x4000, 0x8000, 0x10000
_DIR = tempfile.mkdtemp(prefix=f"kvmkit-fuzz-v{os.getpid()}-")
atexit.register(shutil.rmtree, _DIR, True)     # the scratch files go with the process
atexit.register(shutil.rmtree, _DIR, True)


@functools.lru_cache(maxsize=1)
def memory() -> GuestMemory:
    return GuestMemory.anonymous([(0, LOW_END), (HIGH_BASE, HIGH_END - HIGH_BASE)])


def _address(fdp: atheris.FuzzedDataProvider) -> int:
    mode = fdp.ConsumeIntInRange(0, 7)
    if mode <= 3:
        return BUFFERS + fdp.ConsumeIntInRange(0, LOW_END - BUFFERS - 1)
    if mode == 4:
        return INDIRECT + 16 * fdp.ConsumeIntInRange(0, 63)
    if mode == 5:
        return LOW_END - fdp.ConsumeIntInRange(0, 64)              # straddles into the hole
    if mode == 6:
        return HIGH_BASE + fdp.ConsumeIntInRange(0, HIGH_END - HIGH_BASE)
    return fdp.ConsumeIntInRange(0, (1 << 64) - 1)


def _length(fdp: atheris.FuzzedDataProvider) -> int:
    mode = fdp.ConsumeIntInRange(0, 3)
    if mode <= 1:
        return fdp.ConsumeIntInRange(0, 64)
    if mode == 2:
        return fdp.ConsumeIntInRange(0, 1 << 16)
    return fdp.ConsumeIntInRange(0, (1 << 32) - 1)


def _descriptors(fdp: atheris.FuzzedDataProvider, n: int) -> bytes:
    out = bytearray()
    for _ in range(n):
        flags = fdp.ConsumeIntInRange(0, 7) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 0xFFFF)
        nxt = fdp.ConsumeIntInRange(0, n + 1)
        out += struct.pack("<QIHH", _address(fdp), _length(fdp), flags, nxt)
    return bytes(out)


def lay_out(fdp: atheris.FuzzedDataProvider, queue: Virtqueue) -> int:
    """Write one queue's rings and buffers from the input; returns features."""
    mem = memory()
    mem.view(0, LOW_END)[:] = bytes(LOW_END)
    n = 1 << fdp.ConsumeIntInRange(0, 8)
    queue.size = n
    queue.desc_addr, queue.avail_addr, queue.used_addr = DESC, AVAIL, USED
    if fdp.ConsumeIntInRange(0, 15) == 0:                         # sometimes hostile ring addresses
        queue.desc_addr = fdp.ConsumeIntInRange(0, HIGH_END)
        queue.used_addr = fdp.ConsumeIntInRange(0, HIGH_END)
    features = (F_EVENT_IDX if fdp.ConsumeBool() else 0, F_INDIRECT_DESC if fdp.ConsumeBool() else 0)
    feats = sum(1 << f for f in features if f) | 1 << F_VERSION_1
    mem.write(DESC, _descriptors(fdp, min(n, 32)))
    mem.write(INDIRECT, _descriptors(fdp, fdp.ConsumeIntInRange(0, 8)))
    heads = [fdp.ConsumeIntInRange(0, n + 2) for _ in range(min(n, 8))]
    avail_idx = len(heads) if fdp.ConsumeIntInRange(0, 7) else fdp.ConsumeIntInRange(0, 0xFFFF)
    mem.write(AVAIL, struct.pack("<HH", fdp.ConsumeIntInRange(0, 1), avail_idx))
    mem.write(AVAIL + 4, b"".join(struct.pack("<H", h) for h in heads))
    mem.write(AVAIL + 4 + 2 * n, struct.pack("<H", fdp.ConsumeIntInRange(0, 0xFFFF)))   # used_event
    payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 4096))
    mem.write(BUFFERS, payload)
    for i in range(min(n, 32)):                                    # every buffer starts with the payload
        addr = mem.read_u64(DESC + 16 * i)
        if BUFFERS <= addr < LOW_END - len(payload):
            mem.write(addr, payload)
    return feats


@target("virtqueue", (ChainError,), lambda: [b"", bytes(64), bytes(range(256))])
def virtqueue(data: bytes) -> None:
    """The split ring walker alone: pop, push, notification suppression."""
    fdp = atheris.FuzzedDataProvider(data)
    q = Virtqueue(memory(), 0, 256)
    feats = lay_out(fdp, q)
    q.activate(feats)
    for _ in range(2 * q.size + 2):
        chain = q.pop()
        if chain is None:
            break
        q.push(chain.head, chain.writable_len)
    q.needs_interrupt()
    q.enable_notify()


class RecordingTransport:
    """The transport end: counts interrupts (MSI-X or INTx does not matter here)."""

    def __init__(self) -> None:
        self.queue_irqs = self.config_irqs = 0

    def signal_queue(self, queue) -> None:
        self.queue_irqs += 1

    def signal_config(self) -> None:
        self.config_irqs += 1

    def describe(self) -> dict:
        return {}

    def close(self) -> None:
        pass

    def reset(self) -> None:
        pass


def _drive(dev, data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    dev.set_status(0)
    qi = fdp.ConsumeIntInRange(0, len(dev.queues) - 1)
    q = dev.queues[qi]
    feats = lay_out(fdp, q)
    wanted = feats | (fdp.ConsumeIntInRange(0, (1 << 64) - 1) & dev.features)
    for sel in (0, 1):
        dev.set_driver_word(sel, (wanted >> (32 * sel)) & 0xFFFFFFFF)
    dev.set_status(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
    q.ready = True
    dev.set_status(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK)
    for _ in range(2):
        dev._on_kick(q)
    for other in dev.queues:
        if other is not q and other.active:
            dev._on_kick(other)


def _device(make):
    dev = make()
    dev.transport = RecordingTransport()
    return dev


@functools.lru_cache(maxsize=None)
def _blk():
    from kvmkit.devices.virtio.blk import VirtioBlock, open_backend
    path = os.path.join(_DIR, "disk.raw")
    with open(path, "wb") as f:
        f.truncate(1 << 20)
    return _device(lambda: VirtioBlock(memory(), "fuzz-blk", open_backend(path, "raw", False),
                                       discard=True, path=path, fmt="raw"))


@functools.lru_cache(maxsize=None)
def _net():
    from kvmkit.devices.virtio.net import VirtioNet
    from kvmkit.net.tap import Tap
    tap = Tap.open(f"kvfz{os.getpid() % 100000}")        # down: frames the guest sends go nowhere
    return _device(lambda: VirtioNet(memory(), "fuzz-net", tap))


@functools.lru_cache(maxsize=None)
def _console():
    from kvmkit.devices.virtio.console import VirtioConsole
    out = os.open(os.devnull, os.O_WRONLY | os.O_CLOEXEC)
    return _device(lambda: VirtioConsole(memory(), "fuzz-console", out_fd=out, owns_out=True))


@functools.lru_cache(maxsize=None)
def _vsock():
    from kvmkit.devices.virtio.vsock import VirtioVsock
    return _device(lambda: VirtioVsock(memory(), "fuzz-vsock", 3, os.path.join(_DIR, "v.sock")))


@functools.lru_cache(maxsize=None)
def _balloon():
    from kvmkit.devices.virtio.balloon import VirtioBalloon
    return _device(lambda: VirtioBalloon(memory(), "fuzz-balloon", True))


_SEEDS = lambda: [b"", bytes(128), bytes(range(256)) * 2]   # noqa: E731


@target("virtio-blk", (), _SEEDS)
def virtio_blk(data: bytes) -> None:
    """virtio-blk requests: header, data, status; every request type."""
    _drive(_blk(), data)


@target("virtio-net", (), _SEEDS)
def virtio_net(data: bytes) -> None:
    """virtio-net tx frames with their virtio_net_hdr, and rx buffers."""
    _drive(_net(), data)


@target("virtio-console", (), _SEEDS)
def virtio_console(data: bytes) -> None:
    """virtio-console output and input buffers."""
    _drive(_console(), data)


@target("virtio-vsock", (), _SEEDS)
def virtio_vsock(data: bytes) -> None:
    """virtio-vsock packets (header, ops, credit) from the guest."""
    _drive(_vsock(), data)


@target("virtio-balloon", (), _SEEDS)
def virtio_balloon(data: bytes) -> None:
    """virtio-balloon inflate/deflate page numbers and stats."""
    dev = _balloon()
    _drive(dev, data)
    pages = {r.guest_phys_addr >> 12: r.end >> 12 for r in memory().regions}
    for pfn in dev.inflated:
        assert any(lo <= pfn < hi for lo, hi in pages.items()), f"balloon page {pfn:#x} outside guest RAM"
