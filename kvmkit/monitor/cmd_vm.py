"""Commands that query and steer the VM's run state, through VmControl only.

Reply shapes and state rules follow QEMU 7.2 (``qapi/run-state.json``,
``softmmu/cpus.c``): ``stop`` on a stopped VM and ``cont`` on a running one
succeed silently without events, and ``cont`` refuses a VM that needs a
reset first.
"""

from __future__ import annotations

from typing import Any

from kvmkit.monitor.commands import Command, CommandContext
from kvmkit.monitor.protocol import DEVICE_NOT_ACTIVE, QmpError
from kvmkit.monitor.schema import ANY, INT, Arg, ListOf
from kvmkit.vmm.api import RunState

#: States from which only system_reset brings the VM back (QEMU's
#: runstate_needs_reset).
NEEDS_RESET = frozenset({RunState.INTERNAL_ERROR, RunState.SHUTDOWN, RunState.GUEST_PANICKED})


def status_info(state: RunState) -> dict[str, Any]:
    """QEMU's StatusInfo; also used by HMP ``info status``."""
    return {"running": state is RunState.RUNNING, "singlestep": False, "status": state.value}


def query_status(ctx: CommandContext) -> dict[str, Any]:
    return status_info(ctx.control.state)


def query_name(ctx: CommandContext) -> dict[str, Any]:
    return {"name": ctx.control.name} if ctx.control.name else {}


def query_uuid(ctx: CommandContext) -> dict[str, Any]:
    return {"UUID": str(ctx.control.uuid)}


def query_kvm(ctx: CommandContext) -> dict[str, Any]:
    # kvmkit has no TCG fallback: a VM that exists runs on KVM.
    return {"enabled": True, "present": True}


def query_cpus_fast(ctx: CommandContext) -> list[dict[str, Any]]:
    return ctx.control.query_cpus()


def query_block(ctx: CommandContext) -> list[dict[str, Any]]:
    return ctx.control.query_block()


NO_BALLOON = "No balloon device has been activated"


def query_balloon(ctx: CommandContext) -> dict[str, Any]:
    info = ctx.control.query_balloon()
    if info is None:
        raise QmpError(NO_BALLOON, DEVICE_NOT_ACTIVE)
    return info


def balloon(ctx: CommandContext, value: int) -> None:
    if value <= 0:
        raise QmpError("Parameter 'target' expects a size")
    if not ctx.control.balloon(value):
        raise QmpError(NO_BALLOON, DEVICE_NOT_ACTIVE)


def query_kvmkit_stats(ctx: CommandContext) -> dict[str, Any]:
    """kvmkit's own counters (no QEMU equivalent): exits per vCPU and what
    host-compat completed in the VMM (instructions, syscalls, page faults)."""
    return ctx.control.query_stats()


def stop(ctx: CommandContext) -> None:
    if ctx.control.state is RunState.RUNNING:
        ctx.control.pause()


def cont(ctx: CommandContext) -> None:
    state = ctx.control.state
    if state in NEEDS_RESET:
        raise QmpError("Resetting the Virtual Machine is required")
    if state is not RunState.RUNNING:
        ctx.control.resume()


def system_reset(ctx: CommandContext) -> None:
    ctx.control.reset()


def system_powerdown(ctx: CommandContext) -> None:
    ctx.control.powerdown()


def send_key(ctx: CommandContext, keys: list[dict[str, Any]], hold_time: int | None = None) -> None:
    """QEMU's send-key: press the keys together, then release them.  Keys are
    ``{"type": "qcode", "data": "ctrl"}`` or ``{"type": "number", "data": 29}``
    (a set-1 scancode, 0x100 | code for 0xE0-prefixed ones)."""
    from kvmkit.devices.keycodes import QCODES, chord
    if not keys:
        raise QmpError("Parameter 'keys' expects a non-empty list")
    codes = []
    for i, key in enumerate(keys):
        kind, data = key.get("type"), key.get("data")
        if kind == "qcode" and isinstance(data, str) and data in QCODES:
            codes.append(QCODES[data])
        elif kind == "qcode":
            raise QmpError(f"Parameter 'keys[{i}].data' does not accept value '{data}'")
        elif kind == "number" and isinstance(data, int) and not isinstance(data, bool) \
                and 0 < data < 0x200 and data & 0x7F:
            codes.append(data)
        else:
            raise QmpError(f"Invalid parameter type for 'keys[{i}]', expected: KeyValue")
    ctx.control.send_keys(chord(codes))


def quit_(ctx: CommandContext) -> None:
    ctx.control.quit()


COMMANDS = (
    Command("query-status", query_status, blocking=False),
    Command("query-name", query_name, blocking=False),
    Command("query-uuid", query_uuid, blocking=False),
    Command("query-kvm", query_kvm, blocking=False),
    Command("query-cpus-fast", query_cpus_fast),
    Command("query-block", query_block),
    Command("query-balloon", query_balloon),
    Command("balloon", balloon, args=(Arg("value", INT),)),
    Command("query-kvmkit-stats", query_kvmkit_stats),
    Command("stop", stop),
    Command("cont", cont),
    Command("system_reset", system_reset),
    Command("system_powerdown", system_powerdown),
    Command("send-key", send_key, args=(Arg("keys", ListOf(ANY)), Arg("hold-time", INT, optional=True))),
    Command("quit", quit_),
)
