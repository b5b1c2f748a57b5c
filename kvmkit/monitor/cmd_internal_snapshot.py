"""QMP commands for qcow2 internal snapshots of a running VM's open disks.

``blockdev-snapshot-internal-sync`` and ``blockdev-snapshot-delete-internal-sync``
``{"device", "name"}`` are QEMU's (``device``: ``virtio0``... or the image
path): the VMM that has the disk open writes its metadata, as it must.
``kvmkit-savevm`` ``{"path", "name"}`` is QEMU's ``savevm`` the kvmkit way:
the internal snapshot ``name`` in every writable disk plus the VM state in
the snapshot directory ``path`` (``kvmkit run --restore PATH``), in one
paused moment, so the disks agree with the memory; the manager's snapshots
of running domains are made of it.  Returns what ``kvmkit-snapshot-save``
returns.
"""

from __future__ import annotations

from typing import Any

from kvmkit.monitor.commands import Command, CommandContext
from kvmkit.monitor.protocol import QmpError
from kvmkit.monitor.schema import STR, Arg


def _guarded(what: str, fn, *args, **kwargs) -> Any:
    from kvmkit.errors import KvmkitError
    try:
        return fn(*args, **kwargs)
    except (KvmkitError, OSError) as exc:
        raise QmpError(f"{what}: {exc}") from None


def _check_name(name: str) -> None:
    if not name:
        raise QmpError("Parameter 'name' cannot be empty")


def blockdev_snapshot_internal_sync(ctx: CommandContext, device: str, name: str) -> dict[str, Any]:
    """Create the qcow2 internal snapshot ``name`` in disk ``device``."""
    _check_name(name)
    _guarded(device, ctx.control.internal_disk_snapshot, device, name)
    return {}


def blockdev_snapshot_delete_internal_sync(ctx: CommandContext, device: str, name: str) -> dict[str, Any]:
    """Delete the qcow2 internal snapshot ``name`` from disk ``device``."""
    _check_name(name)
    _guarded(device, ctx.control.internal_disk_snapshot, device, name, delete=True)
    return {"name": name}


def kvmkit_savevm(ctx: CommandContext, path: str, name: str) -> dict[str, Any]:
    """The VM state into ``path``, internal snapshot ``name`` in every writable disk."""
    _check_name(name)
    if not path:
        raise QmpError("Parameter 'path' expects a directory")
    info = _guarded(f"snapshot {path}", ctx.control.savevm, path, name)
    return {"path": info.path, "memory-bytes": info.memory_bytes, "written-bytes": info.written_bytes,
            "seconds": round(info.seconds, 6)}


_DEVICE_NAME = (Arg("device", STR), Arg("name", STR))
COMMANDS = (
    Command("blockdev-snapshot-internal-sync", blockdev_snapshot_internal_sync, args=_DEVICE_NAME),
    Command("blockdev-snapshot-delete-internal-sync", blockdev_snapshot_delete_internal_sync, args=_DEVICE_NAME),
    Command("kvmkit-savevm", kvmkit_savevm, args=(Arg("path", STR), Arg("name", STR))),
)
