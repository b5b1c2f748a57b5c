"""Commands about the monitor itself: negotiation, version, command list.

These are the only commands that do not touch the VM; ``qmp_capabilities``
is the only one QEMU accepts before negotiation.
"""

from __future__ import annotations

from typing import Any

from kvmkit.monitor.commands import Command, CommandContext
from kvmkit.monitor.protocol import COMMAND_NOT_FOUND, QmpError
from kvmkit.monitor.schema import Arg, Enum, ListOf

#: Capabilities QEMU defines; kvmkit offers none of them (no out-of-band
#: execution), so asking for one fails as it does on a QEMU without it.
KNOWN_CAPABILITIES = ("oob",)


def qmp_capabilities(ctx: CommandContext, enable: list[str] | None = None) -> None:
    if ctx.session.negotiated:
        raise QmpError("Capabilities negotiation is already complete, command ignored",
                       COMMAND_NOT_FOUND)
    if enable:
        names = ", ".join(dict.fromkeys(enable))
        raise QmpError(f"Capability {names} not available")
    ctx.session.negotiated = True


def query_version(ctx: CommandContext) -> dict[str, Any]:
    return ctx.version.to_json()


def query_commands(ctx: CommandContext) -> list[dict[str, str]]:
    return [{"name": name} for name in ctx.table.names(ctx.session.negotiated)]


COMMANDS = (
    Command("qmp_capabilities", qmp_capabilities,
            (Arg("enable", ListOf(Enum(KNOWN_CAPABILITIES)), optional=True),),
            blocking=False, negotiation=True),
    Command("query-version", query_version, blocking=False),
    Command("query-commands", query_commands, blocking=False),
)
