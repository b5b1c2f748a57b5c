"""virsh's domain commands: definitions, life cycle, state and monitor."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kvmkit.cli.virsh import command, domain_of
from kvmkit.cli.virsh_output import fields, table
from kvmkit.manager.errors import XmlError


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as e:
        raise XmlError(f"{path}: {e.strerror}") from None


# --- definitions ----------------------------------------------------------------------------
def define(host, a) -> str:
    info = host.define(_read(a.file), a.file)
    return f"Domain '{info.name}' defined from {a.file}\n"


def create(host, a) -> str:
    info = host.create(_read(a.file), a.file)
    return f"Domain '{info.name}' created from {a.file}\n"


def undefine(host, a) -> str:
    info = domain_of(host, a.domain)
    host.undefine(info.name, snapshots_metadata=a.snapshots_metadata, managed_save=a.managed_save)
    return f"Domain '{info.name}' has been undefined\n"


def dumpxml(host, a) -> str:
    return host.dumpxml(domain_of(host, a.domain).name, inactive=a.inactive)


def autostart(host, a) -> str:
    info = domain_of(host, a.domain)
    host.set_autostart(info.name, not a.disable)
    return f"Domain '{info.name}' {'unmarked' if a.disable else 'marked'} as autostarted\n"


def host_autostart(host, a) -> str:
    nets = "".join(f"Network {n} started\n" for n in host.networks.autostart_all())   # domains need them
    return nets + "".join(f"Domain '{n}' started\n" for n in host.autostart_all())


# --- life cycle -----------------------------------------------------------------------------
def _action(method: str, message: str):
    def run(host, a) -> str:
        info = domain_of(host, a.domain)
        getattr(host, method)(info.name)
        return f"Domain '{info.name}' {message}\n"
    return run


def start(host, a) -> str:
    info = domain_of(host, a.domain)
    host.start(info.name, force_boot=a.force_boot, paused=a.paused)
    out = f"Domain '{info.name}' started\n"
    if a.console:
        import sys
        from kvmkit.cli.virsh_console import attach
        sys.stdout.write(out)
        sys.stdout.flush()
        attach(host, info.name)
        return ""
    return out


def setmem(host, a) -> str:
    from kvmkit.manager.units import scaled
    info = domain_of(host, a.domain)
    size = scaled(a.size, "KiB")
    if size is None:
        raise XmlError(f"invalid memory size '{a.size}'")
    live = a.live or None
    config = a.config or None
    if a.current:
        live, config = info.active, not info.active
    host.setmem(info.name, size, live=live, config=config)
    return ""


def qemu_monitor_command(host, a) -> str:
    info = domain_of(host, a.domain)
    text = " ".join(a.cmd)
    if a.hmp:
        message = {"execute": "human-monitor-command", "arguments": {"command-line": text}}
    else:
        try:
            message = json.loads(text)
        except ValueError as e:
            raise XmlError(f"the monitor command is not JSON: {e}") from None
        if not isinstance(message, dict) or "execute" not in message:
            raise XmlError("the monitor command must be a JSON object with \"execute\"")
    message.setdefault("id", "libvirt-1")
    reply = host.qemu_monitor_command(info.name, message)
    if a.hmp:
        return str(reply.get("return", reply.get("error", {}).get("desc", ""))).replace("\r\n", "\n")
    return (json.dumps(reply, indent=2) if a.pretty else json.dumps(reply, separators=(",", ":"))) + "\n"


# --- state ----------------------------------------------------------------------------------
def list_(host, a) -> str:
    active = not a.inactive
    inactive = a.all or a.inactive
    infos = host.domains(active=active, inactive=inactive)
    wanted = {s for s, on in (("running", a.state_running), ("paused", a.state_paused),
                              ("shut off", a.state_shutoff)) if on}
    if wanted:
        infos = [i for i in infos if i.state in wanted]
    if a.with_managed_save or a.without_managed_save:
        infos = [i for i in infos if i.managed_save == a.with_managed_save]
    if a.name or a.uuid:
        return "".join(f"{i.uuid if a.uuid else i.name}\n" for i in infos)

    def state(i) -> str:
        return "saved" if a.managed_save and i.managed_save else i.state
    return table(["Id", "Name", "State"], [[str(i.id) if i.active else "-", i.name, state(i)] for i in infos])


def dominfo(host, a) -> str:
    info = domain_of(host, a.domain)
    d = info.definition
    used = d.current_memory
    if info.active and d.balloon:
        used = host.balloon_actual(info.name) or used
    pairs: list[tuple[str, Any]] = [
        ("Id", info.id if info.active else "-"), ("Name", info.name), ("UUID", info.uuid),
        ("OS Type", "hvm"), ("State", info.state), ("CPU(s)", d.vcpus)]
    cpu = info.cpu_time()
    if cpu:
        pairs.append(("CPU time", f"{cpu:.1f}s"))
    pairs += [("Max memory", f"{d.memory >> 10} KiB"), ("Used memory", f"{used >> 10} KiB"),
              ("Persistent", "yes" if info.persistent else "no"),
              ("Autostart", "enable" if info.autostart else "disable"),
              ("Managed save", "yes" if info.managed_save else "no"), ("Security model", "none"), ("Security DOI", "0")]
    return fields(pairs)


def domstate(host, a) -> str:
    info = domain_of(host, a.domain)
    return f"{info.state} ({info.reason})\n" if a.reason else f"{info.state}\n"


def domid(host, a) -> str:
    info = domain_of(host, a.domain)
    return f"{info.id if info.active else '-'}\n"


def domuuid(host, a) -> str:
    return f"{domain_of(host, a.domain).uuid}\n"


def domname(host, a) -> str:
    return f"{domain_of(host, a.domain).name}\n"


def vcpucount(host, a) -> str:
    info = domain_of(host, a.domain)
    n = info.definition.vcpus
    rows = [("maximum", "config"), ("maximum", "live"), ("current", "config"), ("current", "live")]
    if not info.active:
        rows = [r for r in rows if r[1] == "config"]
    if a.maximum or a.active:
        rows = [r for r in rows if r[0] == ("maximum" if a.maximum else "current")]
    if a.live or a.config:
        rows = [r for r in rows if r[1] == ("live" if a.live else "config")]
    if (a.maximum or a.active) and (a.live or a.config):
        return f"{n}\n"
    return "".join(f"{x:<12} {y:<12} {n:3d}\n" for x, y in rows)


def console(host, a) -> str:
    from kvmkit.cli.virsh_console import attach
    info = domain_of(host, a.domain)
    attach(host, info.name, force=a.force)
    return ""


def edit(host, a) -> str:
    from kvmkit.cli.virsh_edit import edit_domain
    return edit_domain(host, domain_of(host, a.domain).name)


def _domain_arg(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("domain", metavar="DOMAIN", help="domain name, id or uuid")
    return p


def register(sub: Any) -> None:
    command(sub, "define", define, "define (but don't start) a domain from an XML file",
            "Failed to define domain from {file}").add_argument("file", metavar="FILE")
    command(sub, "create", create, "create (start) a transient domain from an XML file",
            "Failed to create domain from {file}").add_argument("file", metavar="FILE")
    p = _domain_arg(command(sub, "undefine", undefine, "undefine a domain", "Failed to undefine domain '{domain}'"))
    p.add_argument("--snapshots-metadata", action="store_true", help="also remove its snapshot metadata")
    p.add_argument("--managed-save", action="store_true", help="also remove its managed save")
    p = _domain_arg(command(sub, "start", start, "start a (previously defined) inactive domain",
                            "Failed to start domain '{domain}'"))
    p.add_argument("--console", action="store_true", help="attach to the console after start")
    p.add_argument("--paused", action="store_true", help="leave the guest paused")
    p.add_argument("--force-boot", action="store_true", help="boot, discarding any managed save")
    for name, method, message, verb in (
            ("shutdown", "shutdown", "is being shutdown", "shutdown"),
            ("destroy", "destroy", "destroyed", "destroy"), ("reboot", "reboot", "is being rebooted", "reboot"),
            ("reset", "reset", "was reset", "reset"), ("suspend", "suspend", "suspended", "suspend"),
            ("resume", "resume", "resumed", "resume")):
        _domain_arg(command(sub, name, _action(method, message), f"{name} a domain",
                            f"Failed to {verb} domain '{{domain}}'"))
    p = command(sub, "list", list_, "list domains")
    for flag in ("--all", "--inactive", "--name", "--uuid", "--state-running", "--state-paused", "--state-shutoff",
                 "--with-managed-save", "--without-managed-save"):
        p.add_argument(flag, action="store_true")
    p.add_argument("--managed-save", action="store_true", help="mark inactive domains with managed save state "
                   "(their state reads 'saved')")
    _domain_arg(command(sub, "dominfo", dominfo, "domain information"))
    _domain_arg(command(sub, "domstate", domstate, "domain state")).add_argument(
        "--reason", action="store_true", help="also print reason for the state")
    _domain_arg(command(sub, "dumpxml", dumpxml, "domain information in XML")).add_argument(
        "--inactive", action="store_true", help="show inactive defined XML")
    _domain_arg(command(sub, "edit", edit, "edit XML configuration for a domain ($VISUAL or $EDITOR)",
                        "Failed to edit domain '{domain}'"))
    _domain_arg(command(sub, "console", console, "connect to the guest console (Ctrl-] detaches)")).add_argument(
        "--force", action="store_true", help="disconnect an existing session (not supported: refused)")
    _domain_arg(command(sub, "autostart", autostart, "autostart a domain",
                        "Failed to mark domain '{domain}' as autostarted")).add_argument(
        "--disable", action="store_true")
    command(sub, "host-autostart", host_autostart,
            "kvmkit: start every autostart network, then every autostart domain that is shut off "
            "(what libvirtd does at boot)")
    for name, fn, what in (("domid", domid, "convert a domain name or UUID to domain id"),
                           ("domuuid", domuuid, "convert a domain name or id to domain UUID"),
                           ("domname", domname, "convert a domain id or UUID to domain name")):
        _domain_arg(command(sub, name, fn, what))
    p = _domain_arg(command(sub, "setmem", setmem, "change memory allocation (the balloon)",
                            "Failed to set memory of domain '{domain}'"))
    p.add_argument("size", metavar="SIZE", help="new memory size, as scaled integer (default KiB)")
    for flag in ("--config", "--live", "--current"):
        p.add_argument(flag, action="store_true")
    p = _domain_arg(command(sub, "vcpucount", vcpucount, "domain vcpu counts"))
    for flag in ("--maximum", "--active", "--live", "--config", "--current"):
        p.add_argument(flag, action="store_true")
    p = _domain_arg(command(sub, "qemu-monitor-command", qemu_monitor_command, "QEMU Monitor Command (QMP)",
                            "Failed to run the monitor command on domain '{domain}'"))
    p.add_argument("--pretty", action="store_true", help="pretty-print any qemu monitor protocol output")
    p.add_argument("--hmp", action="store_true", help="command is in human monitor protocol")
    p.add_argument("cmd", nargs="+", metavar="CMD", help="the command (a QMP JSON object, or HMP text with --hmp)")
