"""Diff snapshots: only the pages dirtied since the VM's last snapshot,
layered on that snapshot (its *base*), and merging a diff back onto it.

After any snapshot of a VM (full or diff), kvmkit keeps KVM's dirty log on
(plus the VMM's own writes, :mod:`kvmkit.vmm.migration.dirty`); a diff
taken next writes just those pages.  The diff's ``vmstate`` is a complete
state record plus ``base`` (the base directory's absolute path and the
SHA-256 of its state file, so a base that was replaced or merged into since
is refused) and ``diff-pages`` (runs ``[first page, count]``); its
``memory`` file is sparse, holding only those pages at their usual offsets.
A restore maps the base's memory copy-on-write and reads the diff's pages
over it (diffs of diffs stack).  ``merge`` writes a diff's pages into its
base's memory file and its state over the base's: the base then *is* the
later state, and the diff directory is removed.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmkit.vmm.snapshot import (MEMORY_FILE, PAGE, STATE_FILE, Snapshot, SnapshotError, SnapshotInfo,
                                 _fsync_dir, _layout, capture, save, write_state)

if TYPE_CHECKING:
    from kvmkit.memory.guest_memory import GuestMemory
    from kvmkit.vmm.machine import Machine


def state_digest(directory: Path) -> str:
    """The SHA-256 recorded in a snapshot's state header (identifies it)."""
    import json
    try:
        with open(directory / STATE_FILE, "rb") as f:
            return json.loads(f.readline())["sha256"]
    except (OSError, ValueError, KeyError):
        raise SnapshotError(f"snapshot {directory}: no readable {STATE_FILE}") from None


class Lineage:
    """The VM's last snapshot and the pages dirtied since it."""

    def __init__(self, path: Path, digest: str, dirty) -> None:
        self.path, self.digest, self.dirty = path, digest, dirty


def _runs(pages: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for p in pages:
        if out and out[-1][0] + out[-1][1] == p:
            out[-1][1] += 1
        else:
            out.append([p, 1])
    return out


def _file_offset(spans: list[tuple[int, int, int]], gpa: int) -> int:
    for start, size, off in spans:
        if start <= gpa < start + size:
            return off + gpa - start
    raise SnapshotError(f"page {gpa:#x} is outside the snapshot's memory")


def save_diff(machine: "Machine", directory: Path, base: Path, pages: set[int]) -> SnapshotInfo:
    t0 = time.monotonic()
    directory.mkdir(parents=True, exist_ok=True)
    body = capture(machine)
    runs = _runs(sorted(pages))
    spans = _layout(body["memory-regions"])
    mem_tmp = directory / (MEMORY_FILE + ".tmp")
    written = 0
    fd = os.open(mem_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for first, n in runs:
            gpa = first * PAGE
            os.pwrite(fd, machine.memory.view(gpa, n * PAGE), _file_offset(spans, gpa))
            written += n * PAGE
        os.ftruncate(fd, spans[-1][2] + spans[-1][1])
        os.fsync(fd)
    finally:
        os.close(fd)
    body["memory-file-size"] = mem_tmp.stat().st_size
    body["base"] = {"path": str(base), "sha256": state_digest(base)}
    body["diff-pages"] = runs
    if (directory / STATE_FILE).exists():
        (directory / STATE_FILE).unlink()
    mem_tmp.rename(directory / MEMORY_FILE)
    write_state(body, directory / STATE_FILE)
    _fsync_dir(directory)
    return SnapshotInfo(str(directory), machine.memory.total_size, written, time.monotonic() - t0)


def save_tracked(machine: "Machine", directory: str | os.PathLike,
                 diff_from: str | os.PathLike | None = None) -> SnapshotInfo:
    """Save (the VM paused, devices quiesced): full, or a diff on
    ``diff_from``, which must be the VM's last snapshot.  Either way the
    dirty log then restarts from this one."""
    d = Path(directory).absolute()
    lineage: Lineage | None = getattr(machine, "_snapshot_lineage", None)
    if diff_from is not None:
        base = Path(diff_from).absolute()
        if not (base / STATE_FILE).exists():
            raise SnapshotError(f"--diff-from {base}: not a snapshot directory")
        if base == d:
            raise SnapshotError(f"--diff-from {base}: a diff cannot replace its own base")
        if lineage is None:
            raise SnapshotError(f"--diff-from {base}: this VM has taken no snapshot since it started, so "
                                "there is no dirty log to diff from (take a full snapshot first)")
        if lineage.path != base or lineage.digest != state_digest(base):
            raise SnapshotError(f"--diff-from {base}: base mismatch: this VM's last snapshot is "
                                f"{lineage.path}{'' if lineage.path != base else ' as it was then (it has changed since)'}; "
                                "a diff can only follow the VM's last snapshot")
        info = save_diff(machine, d, base, lineage.dirty.take())
    else:
        info = save(machine, d)
    if lineage is None:
        lineage = Lineage(d, "", machine.dirty_tracker.open())
        machine._snapshot_lineage = lineage
    else:
        lineage.dirty.take()
    lineage.path, lineage.digest = d, state_digest(d)
    return info


def overlay(snap: Snapshot, memory: "GuestMemory") -> None:
    """Read a diff's pages (and its bases' diffs, oldest first) over ``memory``."""
    base = snap.base
    if base is not None and base.base is not None:
        overlay(base, memory)
    runs = snap.body.get("diff-pages") or []
    spans = snap.memory_layout()
    fd = os.open(snap.path / MEMORY_FILE, os.O_RDONLY)
    try:
        for first, n in runs:
            gpa = first * PAGE
            view = memory.view(gpa, n * PAGE)
            if os.preadv(fd, [view], _file_offset(spans, gpa)) != n * PAGE:
                raise SnapshotError(f"snapshot {snap.path}: its memory file is short")
    finally:
        os.close(fd)


def open_base(directory: Path, body: dict[str, Any]) -> Snapshot | None:
    """The verified base of a diff snapshot (None for a full one)."""
    rec = body.get("base")
    if rec is None:
        return None
    base = Path(rec["path"])
    try:
        snap = Snapshot.open(base)
    except SnapshotError as exc:
        raise SnapshotError(f"diff snapshot {directory}: its base is unusable: {exc}") from None
    if state_digest(base) != rec["sha256"]:
        raise SnapshotError(f"diff snapshot {directory}: base mismatch: {base} is not the snapshot this "
                            "diff was taken on (it was replaced or merged into since)")
    if snap.body["memory-regions"] != body["memory-regions"]:
        raise SnapshotError(f"diff snapshot {directory}: base mismatch: {base} has another memory layout")
    return snap


def merge(diff_dir: str | os.PathLike) -> Path:
    """Fold a diff onto its base; returns the base (now the diff's state)."""
    snap = Snapshot.open(diff_dir)
    if snap.base is None:
        raise SnapshotError(f"snapshot {snap.path}: a full snapshot, not a diff: nothing to merge")
    base = snap.base.path
    spans = snap.memory_layout()
    body = dict(snap.body)
    inherited = snap.base.body.get("base")
    body.pop("diff-pages")
    body.pop("base")
    if inherited is not None:                 # a diff of a diff: the merged one still rests on that base
        body["base"] = inherited
        body["diff-pages"] = _runs(sorted({p for first, n in snap.base.body["diff-pages"] + snap.body["diff-pages"]
                                           for p in range(first, first + n)}))
    body["memory-file-size"] = snap.base.body["memory-file-size"]
    # The base stops being a snapshot while its memory file changes: a crash
    # leaves it refusing ("unfinished") rather than restoring torn memory.
    pending = base / (STATE_FILE + ".merging")
    os.replace(base / STATE_FILE, pending)
    src = os.open(snap.path / MEMORY_FILE, os.O_RDONLY)
    dst = os.open(base / MEMORY_FILE, os.O_WRONLY)
    try:
        for first, n in snap.body["diff-pages"]:
            off = _file_offset(spans, first * PAGE)
            data = os.pread(src, n * PAGE, off)
            if len(data) != n * PAGE:
                raise SnapshotError(f"snapshot {snap.path}: its memory file is short")
            os.pwrite(dst, data, off)
        os.fsync(dst)
    finally:
        os.close(src)
        os.close(dst)
    write_state(body, base / STATE_FILE)
    pending.unlink()
    _fsync_dir(base)
    shutil.rmtree(snap.path)
    return base
