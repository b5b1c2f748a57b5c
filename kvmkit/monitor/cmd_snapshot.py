"""QMP commands for VM state: save a snapshot directory.

``kvmkit-snapshot-save`` ``{"path": DIR, "diff-from"?: BASE}`` returns ``{"path", "memory-bytes",
"written-bytes", "seconds"}``.  kvmkit's own name: QEMU's ``snapshot-save``
writes internal qcow2 snapshots, a different thing.  With ``diff-from`` (the
VM's last snapshot) only the pages dirtied since are written, layered on it.
"""

from __future__ import annotations

from typing import Any

from kvmkit.monitor.commands import Command, CommandContext
from kvmkit.monitor.protocol import QmpError
from kvmkit.monitor.schema import STR, Arg


def kvmkit_snapshot_save(ctx: CommandContext, path: str, diff_from: str | None = None) -> dict[str, Any]:
    """Write the whole VM (vCPUs, irqchip, clock, devices, host-compat state
    and RAM) into the directory ``path``; a running VM pauses for the copy
    and continues.  kvmkit's own command: QEMU's snapshot-save writes
    internal qcow2 snapshots instead.  ``kvmkit run --restore PATH`` starts
    from it.  ``diff-from``: write only the pages dirtied since that
    snapshot (which must be the VM's last one)."""
    from kvmkit.errors import KvmkitError
    if not path:
        raise QmpError("Parameter 'path' expects a directory")
    try:
        info = ctx.control.save_snapshot(path, diff_from) if diff_from else ctx.control.save_snapshot(path)
    except (KvmkitError, OSError) as exc:
        raise QmpError(f"snapshot {path}: {exc}") from None
    return {"path": info.path, "memory-bytes": info.memory_bytes, "written-bytes": info.written_bytes,
            "seconds": round(info.seconds, 6)}


COMMANDS = (
    Command("kvmkit-snapshot-save", kvmkit_snapshot_save, args=(Arg("path", STR), Arg("diff-from", STR, optional=True))),
)
