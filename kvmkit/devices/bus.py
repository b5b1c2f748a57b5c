"""Address-range dispatch for port I/O and MMIO exits.

A vCPU exit names an address; the bus finds the one device whose range holds
it and calls ``read``/``write`` with the offset into that range.  Devices are
plain objects with ``read(offset, size) -> int`` and ``write(offset, size,
value)``; values are little-endian integers of ``size`` bytes (1, 2, 4, 8).
Unclaimed reads return all ones and unclaimed writes are dropped, as on a PC.
"""

from __future__ import annotations

import bisect
import threading
from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@runtime_checkable
class Device(Protocol):
    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, size: int, value: int) -> None: ...


class StatefulDevice(Protocol):
    """A device whose state survives save/restore and migration."""

    def save_state(self) -> dict: ...
    def load_state(self, state: dict) -> None: ...


@dataclass(frozen=True)
class Mapping:
    base: int
    length: int
    device: Device

    @property
    def end(self) -> int:
        return self.base + self.length


class BusConflictError(ValueError):
    pass


class Bus:
    """Sorted, non-overlapping ranges; lookups are a bisect plus one compare.

    Registration takes a lock and swaps in a new list, so lookups from vCPU
    threads need none (PCI BAR moves happen while the guest runs).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._starts: list[int] = []
        self._maps: list[Mapping] = []
        self._lock = threading.Lock()
        self.unclaimed = 0

    def register(self, base: int, length: int, device: Device) -> None:
        if length <= 0:
            raise ValueError(f"{self.name}: empty range at {base:#x}")
        with self._lock:
            maps = list(self._maps)
            for m in maps:
                if base < m.end and m.base < base + length:
                    raise BusConflictError(
                        f"{self.name}: {device!r} at {base:#x}+{length:#x} overlaps {m.device!r} at {m.base:#x}+{m.length:#x}")
            maps.append(Mapping(base, length, device))
            maps.sort(key=lambda m: m.base)
            self._maps, self._starts = maps, [m.base for m in maps]

    def unregister(self, device: Device, base: int | None = None) -> None:
        with self._lock:
            maps = [m for m in self._maps if not (m.device is device and (base is None or m.base == base))]
            self._maps, self._starts = maps, [m.base for m in maps]

    def find(self, addr: int) -> Mapping | None:
        maps = self._maps
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            m = maps[i]
            if addr < m.base + m.length:
                return m
        return None

    def read(self, addr: int, size: int) -> int:
        m = self.find(addr)
        if m is None:
            self.unclaimed += 1
            return (1 << (8 * size)) - 1
        return m.device.read(addr - m.base, size)

    def write(self, addr: int, size: int, value: int) -> bool:
        m = self.find(addr)
        if m is None:
            self.unclaimed += 1
            return False
        m.device.write(addr - m.base, size, value)
        return True

    def mappings(self) -> list[Mapping]:
        return list(self._maps)
