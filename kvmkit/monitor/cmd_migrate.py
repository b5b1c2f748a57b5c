"""QMP commands for live migration, with QEMU's names, arguments and replies
(``qapi/migration.json``):

``migrate`` ``{"uri": "tcp:HOST:PORT"|"unix:PATH"|"file:PATH"|"exec:CMD",
"detach"?: bool, "resume"?: bool, "blk"?: bool, "inc"?: bool}``
    starts migrating in the background and returns ``{}`` at once; follow it
    with ``query-migrate`` or the ``MIGRATION`` events (``{"status": ...}``:
    setup, active, device, completed, failed, cancelling, cancelled) and
    ``MIGRATION_PASS`` (``{"pass": N}``).  ``detach`` is accepted and has no
    effect (as in QEMU); ``resume`` (post-copy recovery) and ``blk``/``inc``
    (block migration) are refused: kvmkit migrates RAM and devices, and disks
    must be shared storage.  On success the source is in run state
    ``postmigrate``; on failure or cancel it runs on as before.
``query-migrate``
    ``{}`` before any migration, else ``{"status", "total-time",
    "setup-time", "ram": {"transferred", "remaining", "total", "duplicate",
    "normal", "normal-bytes", "page-size", "dirty-pages-rate",
    "dirty-sync-count", "mbps"}, "expected-downtime" (while active),
    "downtime" (once completed), "error-desc" (failed)}``; times in ms.
``migrate_cancel``
    stops a running migration (status ``cancelled``); the source keeps running.
``migrate-set-parameters`` ``{"downtime-limit"?: ms, "max-bandwidth"?: bytes/s}``
    and ``query-migrate-parameters``: QEMU's defaults, 300 ms and 128 MiB/s.
"""

from __future__ import annotations

from typing import Any

from kvmkit.errors import KvmkitError
from kvmkit.monitor.commands import Command, CommandContext
from kvmkit.monitor.protocol import QmpError
from kvmkit.monitor.schema import BOOL, STR, UINT64, Arg


def migrate(ctx: CommandContext, uri: str, detach: bool = False, resume: bool = False,
            blk: bool = False, inc: bool = False) -> dict[str, Any]:
    if resume:
        raise QmpError("Cannot resume: kvmkit has no post-copy migration to recover")
    if blk or inc:
        raise QmpError("Block migration is not supported: put the disks on shared storage")
    try:
        ctx.control.migration.start(uri)
    except KvmkitError as exc:
        raise QmpError(str(exc)) from None
    return {}


def query_migrate(ctx: CommandContext) -> dict[str, Any]:
    return ctx.control.migration.query()


def migrate_cancel(ctx: CommandContext) -> dict[str, Any]:
    ctx.control.migration.cancel()
    return {}


def migrate_set_parameters(ctx: CommandContext, downtime_limit: int | None = None,
                           max_bandwidth: int | None = None) -> dict[str, Any]:
    try:
        ctx.control.migration.set_parameters(downtime_limit, max_bandwidth)
    except KvmkitError as exc:
        raise QmpError(str(exc)) from None
    return {}


def query_migrate_parameters(ctx: CommandContext) -> dict[str, Any]:
    return ctx.control.migration.parameters.as_dict()


COMMANDS = (
    Command("migrate", migrate, args=(Arg("uri", STR), Arg("detach", BOOL, optional=True),
                                      Arg("resume", BOOL, optional=True), Arg("blk", BOOL, optional=True),
                                      Arg("inc", BOOL, optional=True))),
    Command("query-migrate", query_migrate, blocking=False),
    Command("migrate_cancel", migrate_cancel, blocking=False),
    Command("migrate-set-parameters", migrate_set_parameters,
            args=(Arg("downtime-limit", UINT64, optional=True), Arg("max-bandwidth", UINT64, optional=True))),
    Command("query-migrate-parameters", query_migrate_parameters, blocking=False),
)
