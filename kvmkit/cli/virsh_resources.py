"""virsh's resource commands: vcpupin, emulatorpin, schedinfo, memtune,
setmaxmem, domstats, nodeinfo, node-memory-tune (output as virsh 9's)."""

from __future__ import annotations

import argparse
from typing import Any

from kvmkit.cli.virsh import command, domain_of
from kvmkit.cli.virsh_output import table
from kvmkit.manager.errors import XmlError


def _modes(a) -> tuple[bool | None, bool | None]:
    if a.current:
        return None, None
    return (a.live or None), (a.config or None)


def _kib(text: str, what: str) -> int:
    from kvmkit.manager.units import scaled
    if text.strip() == "-1":
        return -1
    size = scaled(text, "KiB")
    if size is None:
        raise XmlError(f"invalid {what} '{text}'")
    return size


def vcpupin(host, a) -> str:
    info = domain_of(host, a.domain)
    vcpu = a.vcpu if a.vcpu is not None else a.vcpu_pos
    cpulist = a.cpulist if a.cpulist is not None else a.cpulist_pos
    if cpulist is None:
        rows = host.vcpu_pins(info.name, config=a.config)
        if vcpu is not None:
            rows = [r for r in rows if r[0] == vcpu]
        return table(["VCPU", "CPU Affinity"], [[str(v), c] for v, c in rows])
    if vcpu is None:
        raise XmlError("vcpupin: a vCPU number is required with a CPU list")
    live, config = _modes(a)
    host.vcpu_pin(info.name, vcpu, cpulist, live=live, config=config)
    return ""


def emulatorpin(host, a) -> str:
    info = domain_of(host, a.domain)
    if a.cpulist is None:
        cpus = host.emulator_pin_info(info.name, config=a.config)
        return f" emulator: CPU Affinity\n{'-' * 34}\n       *: {cpus}\n"
    live, config = _modes(a)
    host.emulator_pin(info.name, a.cpulist, live=live, config=config)
    return ""


def schedinfo(host, a) -> str:
    info = domain_of(host, a.domain)
    if a.set:
        params = {}
        for item in a.set:
            for pair in item.split(","):
                key, sep, value = pair.partition("=")
                if not sep or not value.strip().lstrip("-").isdigit():
                    raise XmlError(f"invalid scheduler parameter '{pair}' (expected name=value)")
                params[key.strip()] = int(value)
        live, config = _modes(a)
        host.set_schedinfo(info.name, params, live=live, config=config)
    values = host.schedinfo(info.name, config=a.config)
    lines = [("Scheduler", "posix")] + list(values.items())
    return "".join(f"{k:<15}: {v}\n" for k, v in lines)


def memtune(host, a) -> str:
    info = domain_of(host, a.domain)
    hard = _kib(a.hard_limit, "hard limit") if a.hard_limit is not None else None
    soft = _kib(a.soft_limit, "soft limit") if a.soft_limit is not None else None
    if hard is not None or soft is not None:
        live, config = _modes(a)
        host.set_memtune(info.name, hard, soft, live=live, config=config)
        return ""
    values = host.memtune(info.name, config=a.config)
    show = lambda v: "unlimited" if v is None else str(v >> 10)  # noqa: E731
    return (f"{'hard_limit':<15}: {show(values['hard_limit'])}\n{'soft_limit':<15}: {show(values['soft_limit'])}\n"
            f"{'swap_hard_limit':<15}: unlimited\n")


def setmaxmem(host, a) -> str:
    info = domain_of(host, a.domain)
    live, config = _modes(a)
    host.setmaxmem(info.name, _kib(a.size, "memory size"), live=live, config=config)
    return ""


GROUPS = (("state", "state"), ("cpu_total", "cpu-total"), ("balloon", "balloon"), ("vcpu", "vcpu"),
          ("interface", "interface"), ("block", "block"))


def domstats(host, a) -> str:
    groups = {g for attr, g in GROUPS if getattr(a, attr)} or None
    names = [domain_of(host, d).name for d in a.domains] or [i.name for i in host.domains(inactive=False)]
    out = []
    for name in names:
        out.append(f"Domain: '{name}'\n" + "".join(f"  {k}={v}\n" for k, v in host.domstats(name, groups)))
    return "\n".join(out)


def nodeinfo(host, a) -> str:
    from kvmkit.manager.resources import node_info
    return "".join(f"{k + ':':<20} {v}\n" for k, v in node_info())


def node_memory_tune(host, a) -> str:
    from kvmkit.manager.resources import node_memory_tune as tune
    values = {k: getattr(a, f"shm_{k}") for k in ("pages_to_scan", "sleep_millisecs", "merge_across_nodes")
              if getattr(a, f"shm_{k}") is not None}
    rows = tune(values)
    if values:
        return ""
    return "Shared memory:\n" + "".join(f"\t{k:<20} {v}\n" for k, v in rows)


def _on_domain(sub: Any, name: str, run: Any, help: str, failure: str | None = None) -> argparse.ArgumentParser:
    """A command on one domain taking virsh's --config/--live/--current."""
    p = command(sub, name, run, help, failure)
    p.add_argument("domain", metavar="DOMAIN", help="domain name, id or uuid")
    for flag in ("--config", "--live", "--current"):
        p.add_argument(flag, action="store_true")
    return p


def register(sub: Any) -> None:
    p = _on_domain(sub, "vcpupin", vcpupin, "control or query domain vcpu affinity",
                    "Failed to pin vcpu of domain '{domain}'")
    p.add_argument("vcpu_pos", nargs="?", type=int, metavar="VCPU")
    p.add_argument("cpulist_pos", nargs="?", metavar="CPULIST")
    p.add_argument("--vcpu", type=int)
    p.add_argument("--cpulist")
    p = _on_domain(sub, "emulatorpin", emulatorpin, "control or query domain emulator affinity",
                    "Failed to pin emulator of domain '{domain}'")
    p.add_argument("cpulist", nargs="?", metavar="CPULIST")
    p = _on_domain(sub, "schedinfo", schedinfo, "show/set scheduler parameters (cpu_shares, vcpu_period/quota, "
                    "emulator_period/quota, global_period/quota)", "Failed to set scheduler parameters of '{domain}'")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p = _on_domain(sub, "memtune", memtune, "get or set memory parameters (KiB; -1 unlimited)",
                    "Failed to set memory parameters of '{domain}'")
    p.add_argument("--hard-limit", metavar="KIB")
    p.add_argument("--soft-limit", metavar="KIB")
    p = _on_domain(sub, "setmaxmem", setmaxmem, "change maximum memory limit (the domain's <memory>)",
                    "Failed to set maximum memory of domain '{domain}'")
    p.add_argument("size", metavar="SIZE", help="scaled integer (default KiB)")
    p = command(sub, "domstats", domstats, "get statistics about one or multiple domains")
    for attr, group in GROUPS:
        p.add_argument(f"--{group}", dest=attr, action="store_true")
    p.add_argument("domains", nargs="*", metavar="DOMAIN", help="domains (default: every running one)")
    command(sub, "nodeinfo", nodeinfo, "node information (with the host's KSM figures)")
    p = command(sub, "node-memory-tune", node_memory_tune, "get or set the host's KSM parameters")
    for k in ("pages_to_scan", "sleep_millisecs", "merge_across_nodes"):
        p.add_argument(f"--shm-{k.replace('_', '-')}", dest=f"shm_{k}", type=int)
