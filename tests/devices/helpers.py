"""A tiny virtio driver for tests: builds split rings in a GuestMemory,
drives a device through its real registers, and records interrupts."""

from __future__ import annotations

import ctypes
import os
import struct
import subprocess
import threading
import time
from pathlib import Path

from kvmkit.devices.bus import Bus
from kvmkit.devices.context import DeviceContext, MmioAllocator
from kvmkit.devices.virtio.constants import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE
from kvmkit.memory.guest_memory import GuestMemory

MEM_SIZE = 1 << 24


class FakeLine:
    def __init__(self) -> None:
        self.level = False
        self.pulses = 0

    def set_level(self, high: bool) -> None:
        if high and not self.level:
            self.pulses += 1
        self.level = high

    def pulse(self) -> None:
        self.pulses += 1


class FakeMsi:
    def __init__(self) -> None:
        self.address = self.data = 0
        self.masked = True
        self.fired = 0
        self.eventfd = -1

    def configure(self, address: int, data: int, masked: bool = False) -> None:
        self.address, self.data, self.masked = address, data, masked

    def trigger(self) -> None:
        if not self.masked:
            self.fired += 1

    def release(self) -> None:
        pass


class FakeIrq:
    def __init__(self) -> None:
        self.lines: dict[int, FakeLine] = {}
        self.msis: list[FakeMsi] = []

    def irq_line(self, gsi: int) -> FakeLine:
        return self.lines.setdefault(gsi, FakeLine())

    def allocate_msi(self) -> FakeMsi:
        v = FakeMsi()
        self.msis.append(v)
        return v


def make_context(mem_size: int = MEM_SIZE) -> DeviceContext:
    mem = GuestMemory.anonymous([(0, mem_size)])
    return DeviceContext(memory=mem, pio_bus=Bus("pio"), mmio_bus=Bus("mmio"), irq=FakeIrq(),
                         vm=None, mmio=MmioAllocator(0xD000_0000, 0xE000_0000))


class Ring:
    """The driver side of one split virtqueue at ``base`` in guest memory."""

    def __init__(self, mem: GuestMemory, base: int, size: int, event_idx: bool = False) -> None:
        self.mem, self.size = mem, size
        self.desc = base
        self.avail = base + 16 * size
        self.used = (self.avail + 6 + 2 * size + 4095) & ~4095
        self.end = self.used + 6 + 8 * size
        self.free = list(range(size))
        self.chains: dict[int, list[int]] = {}
        self.avail_idx = 0
        self.used_seen = 0
        self.event_idx = event_idx
        mem.view(base, self.end - base)[:] = bytes(self.end - base)

    def write_desc(self, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.mem.write(self.desc + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))

    def add(self, bufs: list[tuple[int, int, bool]]) -> int:
        """Publish a direct chain of (addr, len, device_writable); returns its head."""
        idx = [self.free.pop(0) for _ in bufs]
        for k, (addr, length, w) in enumerate(bufs):
            last = k == len(bufs) - 1
            self.write_desc(idx[k], addr, length, (DESC_F_WRITE if w else 0) | (0 if last else DESC_F_NEXT),
                            0 if last else idx[k + 1])
        self.chains[idx[0]] = idx
        self.publish(idx[0])
        return idx[0]

    def add_indirect(self, table_addr: int, bufs: list[tuple[int, int, bool]]) -> int:
        for k, (addr, length, w) in enumerate(bufs):
            last = k == len(bufs) - 1
            self.mem.write(table_addr + 16 * k, struct.pack(
                "<QIHH", addr, length, (DESC_F_WRITE if w else 0) | (0 if last else DESC_F_NEXT), 0 if last else k + 1))
        head = self.free.pop(0)
        self.write_desc(head, table_addr, 16 * len(bufs), DESC_F_INDIRECT, 0)
        self.publish(head)
        return head

    def publish(self, head: int) -> None:
        self.mem.write_u16(self.avail + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.write_u16(self.avail + 2, self.avail_idx)

    def set_used_event(self, value: int) -> None:
        self.mem.write_u16(self.avail + 4 + 2 * self.size, value)

    def avail_event(self) -> int:
        return self.mem.read_u16(self.used + 4 + 8 * self.size)

    def used_idx(self) -> int:
        return self.mem.read_u16(self.used + 2)

    def take_used(self) -> list[tuple[int, int]]:
        out = []
        while self.used_seen != self.used_idx():
            i = self.used_seen % self.size
            out.append(struct.unpack("<II", self.mem.read(self.used + 4 + 8 * i, 8)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        for head, _ in out:
            self.free.extend(self.chains.pop(head, [head]))
        return out

    def wait_used(self, n: int = 1, timeout: float = 5.0) -> list[tuple[int, int]]:
        got: list[tuple[int, int]] = []
        deadline = time.monotonic() + timeout
        while len(got) < n:
            got += self.take_used()
            if len(got) >= n:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(got)} of {n} buffers used")
            time.sleep(0.002)
        return got


def wait_for(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.002)


def drain_fd(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


CLONE_NEWNET = 0x40000000


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def in_netns(name: str, fn):
    """Run ``fn`` on a thread that has entered the namespace (setns is per thread)."""
    libc = ctypes.CDLL(None, use_errno=True)
    out: dict = {}

    def run() -> None:
        fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                out["err"] = OSError(ctypes.get_errno(), "setns")
                return
            out["value"] = fn()
        except BaseException as exc:   # noqa: BLE001 - re-raised in the caller
            out["err"] = exc
        finally:
            os.close(fd)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "err" in out:
        raise out["err"]
    return out["value"]


class entered_netns:
    """Run the *current* thread inside a namespace for a ``with`` block (for
    code that must stay on the main thread, such as building a Machine)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        fd = os.open(f"/var/run/netns/{self.name}", os.O_RDONLY)
        try:
            if self._libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns")
        finally:
            os.close(fd)

    def __exit__(self, *exc: object) -> None:
        try:
            if self._libc.setns(self._home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
        finally:
            os.close(self._home)


def fill_fs(mnt) -> Path:
    """Eat a (small tmpfs) file system's free space with one file; returns it.
    Unbuffered, so the last partial write is what fails (not a later close)."""
    filler = os.path.join(mnt, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\1" * 65536)
    except OSError:
        pass
    finally:
        os.close(fd)
    return Path(filler)
