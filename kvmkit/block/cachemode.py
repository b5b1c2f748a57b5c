"""Disk cache modes, as QEMU's ``-drive cache=`` defines them.

Three independent switches make the five modes:

========================  ===========  ============  ==============
mode                      host cache   writethrough  guest flushes
========================  ===========  ============  ==============
``writeback`` (default)   page cache   no            fdatasync
``none``                  O_DIRECT     no            fdatasync
``writethrough``          page cache   yes           fdatasync
``directsync``            O_DIRECT     yes           fdatasync
``unsafe``                page cache   no            ignored
========================  ===========  ============  ==============

*Writethrough* means a write request completes only after its data (and,
for qcow2, the metadata that finds it) has been made durable with
``fdatasync``; the guest is told its disk has no volatile cache.  *O_DIRECT*
keeps guest data out of the host's page cache (no double caching, no
host-memory pressure from a busy guest); it needs a file system that allows
it, and aligned buffers, which :mod:`kvmkit.block.directio` provides.
"""

from __future__ import annotations

from dataclasses import dataclass

from kvmkit.errors import ConfigError


@dataclass(frozen=True)
class CacheMode:
    name: str
    direct: bool                    # O_DIRECT for guest data
    writethrough: bool              # every write is flushed before it completes
    ignore_flush: bool              # flush requests do nothing (cache=unsafe)


MODES: dict[str, CacheMode] = {m.name: m for m in (
    CacheMode("writeback", direct=False, writethrough=False, ignore_flush=False),
    CacheMode("none", direct=True, writethrough=False, ignore_flush=False),
    CacheMode("writethrough", direct=False, writethrough=True, ignore_flush=False),
    CacheMode("directsync", direct=True, writethrough=True, ignore_flush=False),
    CacheMode("unsafe", direct=False, writethrough=False, ignore_flush=True),
)}
DEFAULT = MODES["writeback"]


def parse_cache_mode(text: str | CacheMode | None) -> CacheMode:
    """``"none"`` etc. → :class:`CacheMode` (None → writeback, QEMU's default)."""
    if text is None:
        return DEFAULT
    if isinstance(text, CacheMode):
        return text
    try:
        return MODES[text]
    except KeyError:
        raise ConfigError(f"cache={text!r} must be one of {', '.join(MODES)}") from None
