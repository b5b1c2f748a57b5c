"""Huge pages on the host: how many are reserved and free per size, and
where hugetlbfs is mounted.  Guest RAM on huge pages
(:mod:`kvmkit.memory.backing`) needs pages reserved in advance
(``/proc/sys/vm/nr_hugepages``, or ``hugepages=`` on the host's command
line): without them ``MAP_HUGETLB`` fails with ENOMEM long after the
question could have been answered, so the VMM asks here first.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from kvmkit.errors import HostResourceError

SYSFS = Path("/sys/kernel/mm/hugepages")


@dataclass(frozen=True)
class HugePool:
    size: int                     # bytes per page
    total: int                    # pages reserved
    free: int
    reserved: int                 # promised to mappings, not yet faulted in

    @property
    def available(self) -> int:
        """Pages a new mapping can still have."""
        return self.free - self.reserved


def default_size() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Hugepagesize:"):
            return int(line.split()[1]) * 1024
    return 2 << 20


def pools() -> dict[int, HugePool]:
    """Every huge page size the host supports, by page size in bytes."""
    out = {}
    try:
        entries = sorted(SYSFS.iterdir())
    except OSError:
        return out
    for d in entries:
        if not d.name.startswith("hugepages-"):
            continue
        size = int(d.name[len("hugepages-"):-2]) * 1024

        def n(name: str) -> int:
            return int((d / name).read_text())
        out[size] = HugePool(size, n("nr_hugepages"), n("free_hugepages"), n("resv_hugepages"))
    return out


def hugetlbfs_mounts() -> dict[Path, int]:
    """Mounted hugetlbfs directories and their page size."""
    out = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[:1] != ["hugetlbfs"]:
                continue
            size = default_size()
            for opt in right.split()[2].split(","):
                if opt.startswith("pagesize="):
                    from kvmkit.sizes import parse_size
                    size = parse_size(opt.split("=", 1)[1], default_unit="B")
            out[Path(left.split()[4])] = size
    return out


def page_size_of(path: str | os.PathLike) -> int | None:
    """The huge page size of the hugetlbfs ``path`` is on (None: not hugetlbfs)."""
    st = os.statvfs(path)
    mounts = hugetlbfs_mounts()
    p = Path(path).resolve()
    for m in sorted(mounts, key=lambda m: len(str(m)), reverse=True):
        if p == m or m in p.parents:
            return st.f_bsize
    return None


def require(nbytes: int, size: int | None = None, what: str = "guest RAM") -> HugePool:
    """The pool that can hold ``nbytes`` on ``size`` pages, or a one-line
    error saying how many are reserved, free and needed."""
    size = size or default_size()
    pool = pools().get(size)
    if pool is None:
        raise HostResourceError(f"{what}: this host has no {size >> 10} KiB huge pages")
    need = -(-nbytes // size)
    if pool.available < need:
        from kvmkit.sizes import format_size
        raise HostResourceError(
            f"{what}: {format_size(nbytes)} needs {need} huge pages of {size >> 10} KiB, the host has "
            f"{pool.available} free of {pool.total} reserved (reserve more: echo N > "
            f"/proc/sys/vm/nr_hugepages)")
    return pool


@contextlib.contextmanager
def reserved(count: int) -> Iterator[int]:
    """Reserve ``count`` more default-size pages for the block (tests);
    yields how many the kernel actually has; the old number comes back after."""
    path = Path("/proc/sys/vm/nr_hugepages")
    old = int(path.read_text())
    try:
        path.write_text(str(old + count))
        yield int(path.read_text())
    finally:
        path.write_text(str(old))
