"""QMP commands for VM state: save a snapshot directory.

``kvmkit-snapshot-save`` ``{"path": DIR}`` returns ``{"path", "memory-bytes",
"written-bytes", "seconds"}``.  kvmkit's own name: QEMU's ``snapshot-save``
writes internal qcow2 snapshots, a different thing.

``blockdev-snapshot-internal-sync`` and
``blockdev-snapshot-delete-internal-sync`` ``{"device", "name"}`` are
QEMU's: a qcow2 internal snapshot of one disk, taken by the VMM that has it
open (the manager pairs them with the VM state for a running domain's
snapshot).
"""

from __future__ import annotations

from typing import Any

from kvmkit.monitor.commands import Command, CommandContext
from kvmkit.monitor.protocol import QmpError
from kvmkit.monitor.schema import STR, Arg


def kvmkit_snapshot_save(ctx: CommandContext, path: str, disk_snapshot: str | None = None) -> dict[str, Any]:
    """Write the whole VM (vCPUs, irqchip, clock, devices, host-compat state
    and RAM) into the directory ``path``; a running VM pauses for the copy
    and continues.  kvmkit's own command: QEMU's snapshot-save writes
    internal qcow2 snapshots instead.  ``kvmkit run --restore PATH`` starts
    from it.  ``disk-snapshot``: NAME also takes a qcow2 internal snapshot
    NAME of every writable disk in the same paused moment (a running
    domain's snapshot: disks that agree with the memory)."""
    from kvmkit.errors import KvmkitError
    if not path:
        raise QmpError("Parameter 'path' expects a directory")
    try:
        extra = {"disk_snapshot": disk_snapshot} if disk_snapshot else {}
        info = ctx.control.save_snapshot(path, **extra)
    except (KvmkitError, OSError) as exc:
        raise QmpError(f"snapshot {path}: {exc}") from None
    return {"path": info.path, "memory-bytes": info.memory_bytes, "written-bytes": info.written_bytes,
            "seconds": round(info.seconds, 6)}


def _internal(ctx: CommandContext, device: str, name: str, delete: bool) -> None:
    from kvmkit.errors import KvmkitError
    if not name:
        raise QmpError("Parameter 'name' cannot be empty")
    try:
        ctx.control.internal_disk_snapshot(device, name, delete=delete)
    except (KvmkitError, OSError) as exc:
        raise QmpError(f"{device}: {exc}") from None


def blockdev_snapshot_internal_sync(ctx: CommandContext, device: str, name: str) -> dict[str, Any]:
    """Create the qcow2 internal snapshot ``name`` in disk ``device`` (virtio0... or its path)."""
    _internal(ctx, device, name, delete=False)
    return {}


def blockdev_snapshot_delete_internal_sync(ctx: CommandContext, device: str, name: str) -> dict[str, Any]:
    """Delete the qcow2 internal snapshot ``name`` from disk ``device``."""
    _internal(ctx, device, name, delete=True)
    return {"name": name}


_DEVICE_NAME = (Arg("device", STR), Arg("name", STR))
COMMANDS = (
    Command("kvmkit-snapshot-save", kvmkit_snapshot_save, args=(Arg("path", STR),
                                                                Arg("disk-snapshot", STR, optional=True))),
    Command("blockdev-snapshot-internal-sync", blockdev_snapshot_internal_sync, args=_DEVICE_NAME),
    Command("blockdev-snapshot-delete-internal-sync", blockdev_snapshot_delete_internal_sync, args=_DEVICE_NAME),
)
