"""Kernel samepage merging: what the host's ksmd is doing, and the knobs.

A VMM only marks its guest RAM mergeable (``madvise(MADV_MERGEABLE)``, see
:mod:`kvmkit.memory.backing`); ksmd then scans such areas and merges pages
with equal contents copy-on-write.  Whether ksmd runs at all, and how fast,
is host policy (``/sys/kernel/mm/ksm/run``, ``pages_to_scan``,
``sleep_millisecs``); :func:`tuned` changes it for a while and puts it back
(tests and benchmarks use it).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

KSM = Path("/sys/kernel/mm/ksm")
FIGURES = ("run", "pages_shared", "pages_sharing", "pages_unshared", "pages_volatile", "full_scans",
           "pages_to_scan", "sleep_millisecs", "merge_across_nodes", "ksm_zero_pages", "general_profit")


def available() -> bool:
    return (KSM / "run").exists()


def host_figures() -> dict[str, int]:
    """The host's KSM counters (pages, except ``general_profit`` in bytes); {} without KSM."""
    out = {}
    for name in FIGURES:
        try:
            out[name] = int((KSM / name).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out


def process_figures(pid: int) -> dict[str, int]:
    """One process's share: ``ksm_merging_pages`` (its pages ksmd merged)
    and ``ksm_rmap_items`` / ``ksm_zero_pages`` from ``/proc/PID/ksm_stat``."""
    out: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/ksm_stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                out[key] = int(value)
    except OSError:
        pass
    try:
        out["ksm_merging_pages"] = int(Path(f"/proc/{pid}/ksm_merging_pages").read_text())
    except (OSError, ValueError):
        pass
    return out


def _set(name: str, value: int) -> None:
    with open(KSM / name, "w") as f:
        f.write(str(value))


@contextlib.contextmanager
def tuned(run: int = 1, pages_to_scan: int | None = None, sleep_millisecs: int | None = None) -> Iterator[None]:
    """Run ksmd (faster) inside the block; the old settings come back after."""
    names = [("pages_to_scan", pages_to_scan), ("sleep_millisecs", sleep_millisecs), ("run", run)]
    old = {n: int((KSM / n).read_text()) for n, v in names if v is not None}
    try:
        for n, v in names:
            if v is not None:
                _set(n, v)
        yield
    finally:
        for n, v in old.items():
            with contextlib.suppress(OSError):
                _set(n, v)


def page_size() -> int:
    return os.sysconf("SC_PAGE_SIZE")
