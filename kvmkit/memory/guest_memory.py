"""Guest RAM as seen from the VMM: anonymous (or file-backed) mappings
registered with KVM as memory slots, and the one checked way to touch them.

Every guest-physical address that comes from the guest (a virtqueue
descriptor, a DMA address, a boot-time pointer) is untrusted; all access
goes through :class:`GuestMemory`, which refuses any range that is not wholly
inside one RAM region.  ``view`` hands out zero-copy ``memoryview`` slices so
block I/O can ``preadv``/``pwritev`` straight into guest memory.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from kvmkit.errors import GuestMemoryError, HostResourceError

if TYPE_CHECKING:
    from kvmkit.memory.backing import MemoryBacking


@dataclass
class MemoryRegion:
    """One contiguous range of guest-physical RAM backed by a host mapping."""

    guest_phys_addr: int
    size: int
    mapping: mmap.mmap = field(repr=False)
    slot: int = 0
    anonymous: bool = False      # untouched pages read as zero (not a file's contents)

    @property
    def end(self) -> int:
        return self.guest_phys_addr + self.size

    def contains(self, gpa: int, length: int) -> bool:
        return self.guest_phys_addr <= gpa and gpa + length <= self.end and length >= 0


def _ram_error(total: int, exc: Exception) -> Exception:
    """The one line a failed RAM mmap becomes: how much was asked for, the
    host's reason, and how much the host has free (what the user can act on)."""
    from kvmkit.sizes import format_size
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "too large for this host"
    free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return HostResourceError(f"guest RAM: cannot map {format_size(total)}: {reason} "
                             f"(the host has {free >> 20} MiB free)")


class GuestMemory:
    """The guest's RAM regions, with bounds-checked access.

    Regions never overlap; they are kept sorted by address.  An access that
    straddles two regions is refused even if both are RAM: a device that
    needs that (none of ours does) must split the access itself.
    """

    def __init__(self, regions: list[MemoryRegion] | None = None) -> None:
        self._regions: list[MemoryRegion] = sorted(regions or [], key=lambda r: r.guest_phys_addr)
        # While a migration or diff snapshot tracks writes: the guest page
        # numbers (gpa >> 12) of every range handed out.  KVM's dirty log
        # only sees the guest's own stores; the VMM's (virtio rings and
        # buffers, the syscall trap) go through here.
        self.dirty_pages: set[int] | None = None
        self.backing: "MemoryBacking | None" = None

    @classmethod
    def anonymous(cls, layout: list[tuple[int, int]]) -> "GuestMemory":
        """Allocate anonymous private mappings for ``[(gpa, size), ...]``."""
        return cls.allocate(layout)

    @classmethod
    def allocate(cls, layout: list[tuple[int, int]], backing: "MemoryBacking | None" = None) -> "GuestMemory":
        """Map ``[(gpa, size), ...]`` as ``backing`` says (default: anonymous,
        private, KSM-mergeable; see :mod:`kvmkit.memory.backing`)."""
        from kvmkit.memory.backing import MemoryBacking
        backing = backing or MemoryBacking()
        maps = backing.map(layout)
        # private anonymous RAM: a page never present reads as zero (migration skips it by pagemap)
        anonymous = backing.kind == "anonymous" and not backing.shared
        mem = cls([MemoryRegion(gpa, size, m, slot, anonymous=anonymous)
                   for slot, ((gpa, size), m) in enumerate(zip(layout, maps))])
        mem.backing = backing
        return mem

    @classmethod
    def from_file(cls, path: str, layout: list[tuple[int, int, int]], *, shared: bool = False) -> "GuestMemory":
        """Map ``[(gpa, size, file offset), ...]`` of ``path``: copy-on-write
        (``MAP_PRIVATE``: the guest's writes stay in this process, the file
        is untouched and reads happen page by page as the guest touches
        them) or, with ``shared``, writable through to the file."""
        from kvmkit.memory.backing import MemoryBacking
        regions = []
        fd = os.open(path, os.O_RDWR if shared else os.O_RDONLY)
        try:
            for slot, (gpa, size, offset) in enumerate(layout):
                m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED if shared else mmap.MAP_PRIVATE,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE, offset=offset)
                regions.append(MemoryRegion(gpa, size, m, slot))
        finally:
            os.close(fd)
        mem = cls(regions)
        mem.backing = MemoryBacking("file", path, shared=shared)
        for r in regions:
            mem.backing.advise(r.mapping)        # the copy-on-write pages are anonymous: mergeable
        return mem

    @property
    def regions(self) -> list[MemoryRegion]:
        return list(self._regions)

    @property
    def total_size(self) -> int:
        return sum(r.size for r in self._regions)

    def _find(self, gpa: int, length: int) -> MemoryRegion:
        if length < 0:
            raise GuestMemoryError(f"negative length {length} at guest address {gpa:#x}")
        for r in self._regions:
            if r.contains(gpa, length):
                return r
        raise GuestMemoryError(
            f"guest range {gpa:#x}+{length:#x} is outside guest RAM")

    def check(self, gpa: int, length: int) -> None:
        """Raise :class:`GuestMemoryError` unless the range is all RAM."""
        self._find(gpa, length)

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy, writable view of guest RAM (checked)."""
        r = self._find(gpa, length)
        off = gpa - r.guest_phys_addr
        dirty = self.dirty_pages
        if dirty is not None and length:
            dirty.update(range(gpa >> 12, ((gpa + length - 1) >> 12) + 1))
        return memoryview(r.mapping)[off:off + length]

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data

    def read_u8(self, gpa: int) -> int:
        return self.view(gpa, 1)[0]

    def read_u16(self, gpa: int) -> int:
        return struct.unpack_from("<H", self.view(gpa, 2))[0]

    def read_u32(self, gpa: int) -> int:
        return struct.unpack_from("<I", self.view(gpa, 4))[0]

    def read_u64(self, gpa: int) -> int:
        return struct.unpack_from("<Q", self.view(gpa, 8))[0]

    def write_u8(self, gpa: int, value: int) -> None:
        self.view(gpa, 1)[0] = value & 0xFF

    def write_u16(self, gpa: int, value: int) -> None:
        struct.pack_into("<H", self.view(gpa, 2), 0, value & 0xFFFF)

    def write_u32(self, gpa: int, value: int) -> None:
        struct.pack_into("<I", self.view(gpa, 4), 0, value & 0xFFFFFFFF)

    def write_u64(self, gpa: int, value: int) -> None:
        struct.pack_into("<Q", self.view(gpa, 8), 0, value & 0xFFFFFFFFFFFFFFFF)

    def clear(self) -> None:
        """All of guest RAM reads back as zeros (a power cycle): private
        anonymous pages are dropped; shared or file pages are punched out of
        their file (``MADV_REMOVE``) or, copy-on-write over a file, zeroed."""
        b = self.backing
        for r in self._regions:
            if b is None or (not b.shared and b.kind != "file"):
                r.mapping.madvise(mmap.MADV_DONTNEED)
            elif b.shared:
                r.mapping.madvise(mmap.MADV_REMOVE)
            else:
                zeros = bytes(1 << 20)
                for off in range(0, r.size, len(zeros)):
                    n = min(len(zeros), r.size - off)
                    r.mapping[off:off + n] = zeros[:n]

    def close(self) -> None:
        for r in self._regions:
            try:
                r.mapping.close()
            except BufferError:
                pass  # a view is still alive; the mapping goes with the process
