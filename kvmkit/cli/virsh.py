"""``kvmkit virsh``: libvirt's virsh for kvmkit domains, so that
``alias virsh='kvmkit virsh'`` works for the supported subset.

Output, messages and exit statuses follow virsh 9: tables and
``Label:  value`` records as virsh lays them out, ``error: Failed to start
domain 'x'`` followed by the reason, exit status 1 on any failure, and a
blank line after each command's output (``-q`` drops it, as virsh's does).
The commands are thin: they parse, call :class:`kvmkit.Host`, and print.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from kvmkit.errors import KvmkitError

MODULES = ("kvmkit.cli.virsh_domain", "kvmkit.cli.virsh_copies", "kvmkit.cli.virsh_storage",
           "kvmkit.cli.virsh_network", "kvmkit.cli.virsh_resources")


class LookupFailed(KvmkitError):
    """virsh's one-line "failed to get domain 'x'" (no second reason line)."""


class VirshArgumentParser(argparse.ArgumentParser):
    """virsh reports usage errors as ``error: ...`` with exit status 1."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "virsh", help="manage domains, networks, storage pools, clones and snapshots (libvirt's virsh, for kvmkit)",
        description="libvirt's virsh commands over kvmkit: domains defined in libvirt's XML, each running "
                    "in its own detached VMM, with virtual networks (bridge, NAT, dnsmasq), storage pools, clones and snapshots. State lives in "
                    "/var/lib/kvmkit for root, $XDG_DATA_HOME/kvmkit otherwise (--connect DIR, "
                    "KVMKIT_STATE_DIR).",
        epilog="Exit status: 0 on success, 1 on any failure (as virsh). Run 'kvmkit virsh COMMAND --help'.")
    p.add_argument("-c", "--connect", metavar="DIR", help="state directory (or kvmkit://DIR, qemu:///system, "
                   "qemu:///session)")
    p.add_argument("-q", "--quiet", action="store_true", help="no blank line after the output")
    sub = p.add_subparsers(dest="virsh_command", metavar="COMMAND", required=True,
                           parser_class=VirshArgumentParser)
    import importlib
    for name in MODULES:
        importlib.import_module(name).register(sub)
    p.set_defaults(handler=cmd_virsh)


def cmd_virsh(args: argparse.Namespace) -> int:
    from kvmkit.manager import Host
    from kvmkit.manager.statedir import resolve_connect
    status = 0
    try:
        host = Host(resolve_connect(args.connect))
        out = args.run(host, args)
        if out:
            sys.stdout.write(out)
    except LookupFailed as e:
        print(f"error: {e}", file=sys.stderr)
        status = 1
    except KvmkitError as e:
        failure = getattr(args, "failure", None)
        if failure:
            print(f"error: {failure.format(**vars(args))}", file=sys.stderr)
        print(f"error: {e}", file=sys.stderr)
        status = 1
    if not args.quiet:
        print()
    sys.stdout.flush()
    return status


def command(sub: Any, name: str, run: Any, help: str, failure: str | None = None) -> argparse.ArgumentParser:
    """Add one virsh command; ``failure`` is virsh's first error line (a
    format string over the parsed arguments)."""
    p = sub.add_parser(name, help=help, description=help)
    p.set_defaults(run=run, failure=failure)
    return p


def domain_of(host: Any, key: str) -> Any:
    """Look a domain up by name, id or UUID, failing as virsh does."""
    from kvmkit.manager.errors import NoDomain
    try:
        return host.lookup(key)
    except NoDomain:
        raise LookupFailed(f"failed to get domain '{key}'") from None
