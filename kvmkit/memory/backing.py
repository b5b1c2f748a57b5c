"""Where guest RAM comes from: anonymous memory, huge pages, or a file;
private or shared; merged by KSM or not; faulted in on use or up front.

libvirt's ``<memoryBacking>`` and QEMU's memory backends, as one frozen
value.  :meth:`MemoryBacking.map` makes the host mappings of a RAM layout;
:class:`kvmkit.memory.guest_memory.GuestMemory` wraps them as it wraps
any other mapping, so nothing else in the VMM knows which backing it got.

- ``anonymous`` (default): private anonymous memory; ``shared`` makes it a
  memfd mapped shared (a second process, e.g. a vhost-user backend, can map
  the same pages).
- ``hugepages``: ``MAP_HUGETLB`` (or a memfd with ``MFD_HUGETLB`` when
  shared), or a file in a hugetlbfs directory (``path``, QEMU's
  ``-mem-path``).  The pages must be reserved on the host first; a host
  without enough is told so before anything is mapped.
- ``file``: the file at ``path`` (created and sized if needed); ``shared``
  writes the guest's RAM through to it (visible to any process mapping the
  file), private maps it copy-on-write.
- ``mergeable``: ``madvise(MADV_MERGEABLE)`` so the host's ksmd may merge
  equal pages across VMs (libvirt's default; ``<nosharepages/>`` turns it
  off).  Only private anonymous pages can merge.
- ``prealloc``: fault every page in before the guest starts
  (``MADV_POPULATE_WRITE``), so a host that cannot hold the guest fails at
  start, not in the middle of a guest's write.
"""

from __future__ import annotations

import mmap
import os
import sys
import tempfile
from dataclasses import dataclass

from kvmkit.errors import ConfigError, HostResourceError

MAP_HUGETLB = 0x40000
MADV_POPULATE_WRITE = 23
PREALLOC_CHUNK = 64 << 20
KINDS = ("anonymous", "hugepages", "file")


@dataclass(frozen=True)
class MemoryBacking:
    kind: str = "anonymous"
    path: str | None = None           # file: the file; hugepages: a hugetlbfs directory (None: MAP_HUGETLB)
    shared: bool = False
    mergeable: bool = True
    prealloc: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"memory backing {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.kind == "file" and not self.path:
            raise ConfigError("file-backed guest memory needs a path (--mem-file PATH)")
        if self.path is not None and not self.path:
            raise ConfigError("the guest memory path is empty")

    def describe(self) -> str:
        parts = [self.kind if self.kind != "file" else f"file {self.path}"]
        if self.kind == "hugepages" and self.path:
            parts.append(f"in {self.path}")
        parts += [w for w, on in (("shared", self.shared), ("prealloc", self.prealloc),
                                  ("KSM off", not self.mergeable)) if on]
        return ", ".join(parts)

    # --- mapping ----------------------------------------------------------------------
    def map(self, layout: list[tuple[int, int]]) -> list[mmap.mmap]:
        """One mapping per ``(gpa, size)``; all or nothing."""
        total = sum(size for _, size in layout)
        page = self._page_size()
        for gpa, size in layout:
            if size % page:
                raise ConfigError(f"guest RAM region at {gpa:#x} ({size >> 20} MiB) is not a multiple of "
                                  f"the {page >> 10} KiB huge page size")
        if self.kind == "hugepages":
            from kvmkit.host import hugepages
            hugepages.require(total, page)
        fd = self._open(total)
        maps: list[mmap.mmap] = []
        try:
            offset = 0
            for _, size in layout:
                maps.append(self._map_one(fd, size, offset, total))
                offset += size
            for m in maps:
                self.advise(m)
            if self.prealloc:
                self._populate(maps, total)
        except BaseException:
            for m in maps:
                m.close()
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        return maps

    def _page_size(self) -> int:
        if self.kind != "hugepages":
            return mmap.PAGESIZE
        from kvmkit.host import hugepages
        if self.path:
            size = hugepages.page_size_of(self._checked_dir())
            if size is None:
                raise ConfigError(f"--mem-path {self.path}: not a hugetlbfs mount "
                                  f"(mount -t hugetlbfs none {self.path})")
            return size
        return hugepages.default_size()

    def _checked_dir(self) -> str:
        if not os.path.isdir(self.path or ""):
            raise ConfigError(f"--mem-path {self.path}: no such directory")
        return self.path or ""

    def _open(self, total: int) -> int:
        """The descriptor to map (-1: anonymous)."""
        try:
            if self.kind == "file":
                fd = os.open(self.path or "", os.O_RDWR | os.O_CREAT, 0o600)
                if os.fstat(fd).st_size < total:
                    os.ftruncate(fd, total)
                return fd
            if self.kind == "hugepages" and self.path:
                fd, name = tempfile.mkstemp(prefix="kvmkit-ram.", dir=self._checked_dir())
                os.unlink(name)            # QEMU's -mem-path: a file nobody else can open
                os.ftruncate(fd, total)
                return fd
            if self.shared:
                flags = os.MFD_CLOEXEC | (os.MFD_HUGETLB if self.kind == "hugepages" else 0)
                fd = os.memfd_create("kvmkit-ram", flags)
                os.ftruncate(fd, total)
                return fd
        except OSError as exc:
            what = f"guest memory file {self.path}" if self.path else "shared guest memory"
            raise HostResourceError(f"{what}: {exc.strerror}") from None
        return -1

    def _map_one(self, fd: int, size: int, offset: int, total: int) -> mmap.mmap:
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        share = mmap.MAP_SHARED if self.shared else mmap.MAP_PRIVATE
        try:
            if fd < 0:
                flags = share | mmap.MAP_ANONYMOUS | (MAP_HUGETLB if self.kind == "hugepages" else 0)
                return mmap.mmap(-1, size, flags=flags, prot=prot)
            return mmap.mmap(fd, size, flags=share, prot=prot, offset=offset)
        except (OSError, OverflowError) as exc:
            from kvmkit.memory.guest_memory import _ram_error
            raise _ram_error(total, exc) from None

    def advise(self, m: mmap.mmap) -> None:
        """Mark a mapping mergeable (or not) for KSM, as this backing says."""
        if not hasattr(mmap, "MADV_MERGEABLE"):
            return
        try:
            m.madvise(mmap.MADV_MERGEABLE if self.mergeable else mmap.MADV_UNMERGEABLE)
        except OSError:
            pass               # a kernel without KSM: nothing to merge, nothing to refuse

    def _populate(self, maps: list[mmap.mmap], total: int) -> None:
        from tqdm import tqdm
        with tqdm(total=total, unit="B", unit_scale=True, desc="preallocating guest RAM", leave=False,
                  disable=total < (512 << 20) or not sys.stderr.isatty()) as bar:
            for m in maps:
                for start in range(0, len(m), PREALLOC_CHUNK):
                    n = min(PREALLOC_CHUNK, len(m) - start)
                    try:
                        m.madvise(MADV_POPULATE_WRITE, start, n)
                    except OSError as exc:
                        from kvmkit.sizes import format_size
                        raise HostResourceError(f"preallocating {format_size(total)} of guest RAM: "
                                                f"{exc.strerror} after {format_size(bar.n)}") from None
                    bar.update(n)

