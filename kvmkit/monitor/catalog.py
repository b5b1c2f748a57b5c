"""The standard QMP command set, assembled from the modules that own it.

A later feature (migration, snapshots, hotplug, the balloon) adds its module's
``COMMANDS`` here; nothing else in the monitor changes.
"""

from __future__ import annotations

from kvmkit.monitor import cmd_internal_snapshot, cmd_migrate, cmd_monitor, cmd_snapshot, cmd_vm, hmp
from kvmkit.monitor.commands import CommandTable


def default_commands() -> CommandTable:
    """A fresh table (callers may add commands without affecting others)."""
    return CommandTable(cmd_monitor.COMMANDS + cmd_vm.COMMANDS + cmd_snapshot.COMMANDS + cmd_migrate.COMMANDS
                        + hmp.COMMANDS + cmd_internal_snapshot.COMMANDS)
