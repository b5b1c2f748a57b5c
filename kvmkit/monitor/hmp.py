"""``human-monitor-command``: a small subset of QEMU's HMP, over QMP.

Operators type ``info registers`` out of habit and tools such as
``virsh qemu-monitor-command --hmp`` send it through QMP, so kvmkit answers
the few commands that make sense for it with QEMU's text (CRLF line ends,
since QEMU's monitor output has them) and answers everything else the way
QEMU answers a command it does not know.  Like the QMP table, HMP commands
are rows in a table (``info`` is a row whose sub-table holds its items).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from kvmkit.monitor.cmd_vm import status_info
from kvmkit.monitor.commands import Command, CommandContext
from kvmkit.monitor.cpu_dump import format_registers
from kvmkit.monitor.protocol import QmpError
from kvmkit.monitor.schema import INT, STR, Arg
from kvmkit.vmm.api import RunState


@dataclass(frozen=True)
class HmpCommand:
    """One HMP command: ``flags`` are the ``-x`` options it accepts."""

    name: str
    params: str
    help: str
    run: Callable[[CommandContext, int, frozenset[str]], str] | None = None
    flags: frozenset[str] = frozenset()
    sub_table: tuple["HmpCommand", ...] = ()


def _info_status(ctx: CommandContext, cpu: int, flags: frozenset[str]) -> str:
    info = status_info(ctx.control.state)
    text = "VM status: " + ("running" if info["running"] else "paused")
    if not info["running"] and info["status"] != RunState.PAUSED.value:
        text += f" ({info['status']})"
    return text + "\n"


def _info_cpus(ctx: CommandContext, cpu: int, flags: frozenset[str]) -> str:
    return "".join(f"{'*' if c['cpu-index'] == cpu else ' '} CPU #{c['cpu-index']}: "
                   f"thread_id={c.get('thread-id', 0)}\n" for c in ctx.control.query_cpus())


def _info_registers(ctx: CommandContext, cpu: int, flags: frozenset[str]) -> str:
    indexes = ([c["cpu-index"] for c in ctx.control.query_cpus()] if "-a" in flags else [cpu])
    return "".join(f"\nCPU#{i}\n" + format_registers(ctx.control.cpu_registers(i))
                   for i in indexes)


INFO_COMMANDS = (
    HmpCommand("cpus", "", "show infos for each CPU", _info_cpus),
    HmpCommand("registers", "[-a]",
               "show the cpu registers (-a: all - show register info for all cpus)",
               _info_registers, frozenset({"-a"})),
    HmpCommand("status", "", "show the current VM status (running|paused)", _info_status),
)

HMP_COMMANDS = (
    HmpCommand("info", "[subcommand]", "show various information about the system state",
               sub_table=INFO_COMMANDS),
)


def _help(prefix: str, table: tuple[HmpCommand, ...]) -> str:
    return "".join(f"{prefix}{c.name} {c.params} -- {c.help}\n" for c in table)


def run_line(ctx: CommandContext, line: str, cpu: int) -> str:
    """Parse and run one HMP line; returns its output with QEMU's wording."""
    text = line.strip()
    if not text:
        return ""
    table = HMP_COMMANDS
    words = text.split()
    typed = 0                   # how many words name the command so far
    while True:
        name = words[typed]
        typed += 1
        found = next((c for c in table if c.name == name), None)
        if found is None:
            return f"unknown command: '{' '.join(words[:typed])}'\n"
        if not found.sub_table:
            break
        if typed == len(words):
            return _help(" ".join(words[:typed]) + " ", found.sub_table)
        table = found.sub_table
    flags = set()
    for word in words[typed:]:
        if word.startswith("-") and len(word) > 1:
            if word not in found.flags:
                return f"{found.name}: unsupported option {word}\n"
            flags.add(word)
        else:
            return (f"{found.name}: extraneous characters at the end of line\n"
                    f"Try \"help {' '.join(words[:typed])}\" for more information\n")
    assert found.run is not None
    return found.run(ctx, cpu, frozenset(flags))


def human_monitor_command(ctx: CommandContext, command_line: str,
                          cpu_index: int | None = None) -> str:
    cpus = {c["cpu-index"] for c in ctx.control.query_cpus()}
    if cpu_index is not None and cpu_index not in cpus:
        raise QmpError("Parameter 'cpu-index' expects a CPU number")
    cpu = cpu_index if cpu_index is not None else min(cpus, default=0)
    return run_line(ctx, command_line, cpu).replace("\n", "\r\n")


COMMANDS = (
    Command("human-monitor-command", human_monitor_command,
            (Arg("command-line", STR), Arg("cpu-index", INT, optional=True))),
)
