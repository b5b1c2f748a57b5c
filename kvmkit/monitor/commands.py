"""The command table: QMP command names mapped to handlers and argument schemas.

Commands are data, not branches of one big ``if``: each module that owns a
group of commands (the monitor itself, VM run state, HMP, and later
migration, snapshots, hotplug, the balloon) exports a ``COMMANDS`` tuple, and
:func:`kvmkit.monitor.catalog.default_commands` joins them.  Dispatch is split
in two steps so the server can resolve a request cheaply on its I/O thread and
run the handler wherever the command needs (``blocking`` ones go to a worker
thread, since e.g. ``stop`` waits for every vCPU to leave KVM_RUN).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from kvmkit.errors import KvmkitError
from kvmkit.monitor.protocol import (COMMAND_NOT_FOUND, NEGOTIATION_REQUIRED, QmpError,
                                     VersionInfo, check_request, failure, request_id, success)
from kvmkit.monitor.schema import Arg, check_arguments
from kvmkit.vmm.api import VmControl

log = logging.getLogger(__name__)

Handler = Callable[..., Any]


@dataclass(frozen=True)
class Command:
    """One QMP command.

    ``blocking`` commands may wait on the VM and run on the dispatch thread;
    the others only read cheap state and run inline.  ``negotiation`` marks
    the commands allowed before ``qmp_capabilities`` (QEMU allows only that
    one).
    """

    name: str
    handler: Handler
    args: tuple[Arg, ...] = ()
    blocking: bool = True
    negotiation: bool = False


@dataclass
class SessionState:
    """Per-connection protocol state that commands may change."""

    number: int
    negotiated: bool = False


@dataclass
class CommandContext:
    """What a handler may touch: the VM (through VmControl only), the table
    (for query-commands), the session (for qmp_capabilities), the version."""

    control: VmControl
    table: "CommandTable"
    session: SessionState
    version: VersionInfo


class CommandTable:
    """Name → :class:`Command`; later issues register more commands here."""

    def __init__(self, commands: Iterable[Command] = ()) -> None:
        self._commands: dict[str, Command] = {}
        for command in commands:
            self.add(command)

    def add(self, command: Command) -> None:
        if command.name in self._commands:
            raise ValueError(f"QMP command {command.name!r} is registered twice")
        self._commands[command.name] = command

    def get(self, name: str) -> Command | None:
        return self._commands.get(name)

    def names(self, negotiated: bool = True) -> list[str]:
        return [name for name, cmd in self._commands.items() if negotiated or cmd.negotiation]

    def __contains__(self, name: object) -> bool:
        return name in self._commands


@dataclass(frozen=True)
class Call:
    """A request resolved to a command with validated arguments."""

    command: Command
    kwargs: dict[str, Any]
    has_id: bool
    id: Any


def resolve(table: CommandTable, session: SessionState, message: Any) -> Call | dict[str, Any]:
    """Check the envelope, find the command, check its arguments.

    Returns a :class:`Call`, or the error reply to send (``id`` echoed, and
    QEMU's negotiation hint in place of CommandNotFound before
    ``qmp_capabilities``).
    """
    has_id, rid = request_id(message)
    try:
        request = check_request(message)
        command = table.get(request.command)
        if command is None or not (session.negotiated or command.negotiation):
            if not session.negotiated:
                raise QmpError(NEGOTIATION_REQUIRED, COMMAND_NOT_FOUND)
            raise QmpError(f"The command {request.command} has not been found", COMMAND_NOT_FOUND)
        kwargs = check_arguments(command.args, request.arguments)
    except QmpError as error:
        return failure(error, has_id, rid)
    return Call(command, kwargs, has_id, rid)


def execute(call: Call, context: CommandContext) -> dict[str, Any]:
    """Run a resolved call and shape its reply; never raises.

    Errors a user can act on (:class:`KvmkitError`) become GenericError with
    their message; anything else is a bug in kvmkit, logged with its
    traceback, and still answered so the client is not left waiting.
    """
    try:
        value = call.command.handler(context, **call.kwargs)
    except QmpError as error:
        return failure(error, call.has_id, call.id)
    except KvmkitError as error:
        return failure(QmpError(str(error)), call.has_id, call.id)
    except Exception as error:  # noqa: BLE001 - the monitor must answer and survive
        log.exception("QMP command %s failed", call.command.name)
        return failure(QmpError(f"{call.command.name}: internal error: {error}"),
                       call.has_id, call.id)
    return success(value, call.has_id, call.id)
