"""``kvmkit qmp PATH COMMAND [ARGS-as-JSON]``, and the ``--qmp`` glue for ``run``.

The command is for quick use from a shell (``kvmkit qmp /run/vm.qmp stop``):
it prints the command's ``return`` as indented JSON, or the error's
description on stderr with exit status 1.  :func:`parse_qmp_address` and
:func:`start_monitor` are what ``kvmkit run --qmp unix:PATH[,server,wait=off]``
uses to put a monitor on a running VM.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from kvmkit.errors import KvmkitError
from kvmkit.monitor.address import QmpAddress
from kvmkit.monitor.address import parse_qmp_address as _parse

if TYPE_CHECKING:                       # imported lazily: every `kvmkit` command loads this module
    from kvmkit.monitor.server import QmpServer
    from kvmkit.vmm.api import VmControl


def parse_qmp_address(spec: str) -> QmpAddress:
    """Parse ``unix:PATH[,server][,wait=on|off]`` or ``tcp:HOST:PORT[,...]``.

    Raises :class:`kvmkit.errors.ConfigError` with the reason on bad input,
    so ``run`` can reject ``--qmp`` before it builds the VM.
    """
    return _parse(spec)


def start_monitor(control: VmControl, spec: str | QmpAddress) -> QmpServer:
    """Start a QMP server for ``control`` and return it (the caller closes it).

    With ``wait=on`` (QEMU's default for ``server``), this blocks until the
    first client connects, so call it before starting the vCPUs.
    """
    from kvmkit.monitor.server import QmpServer

    server = QmpServer(control, spec)
    server.start()
    if server.address.wait:
        print(f"kvmkit: waiting for a QMP client on {server.address}", file=sys.stderr)
        try:
            server.wait_for_client()
        except BaseException:           # Ctrl-C while waiting: leave no socket behind
            server.close()
            raise
    return server


def _client_address(path: str) -> QmpAddress:
    return _parse(path if path.startswith(("unix:", "tcp:")) else f"unix:{path}")


def seconds(text: str) -> float:
    """An argparse type: a positive, finite number of seconds (socket
    timeouts refuse the rest with a traceback)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86400 * 365:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0 and at most a year")
    return value


def cmd_qmp(args: argparse.Namespace) -> int:
    """Run one command against a QMP server and print its result."""
    from kvmkit.monitor.client import QmpClient
    from kvmkit.monitor.protocol import QmpError

    arguments: Any = None
    if args.arguments is not None:
        try:
            arguments = json.loads(args.arguments)
        except json.JSONDecodeError as error:
            print(f"kvmkit qmp: error: ARGS is not valid JSON: {error}", file=sys.stderr)
            return 2
        if not isinstance(arguments, dict):
            print("kvmkit qmp: error: ARGS must be a JSON object, e.g. '{\"device\": \"vda\"}'",
                  file=sys.stderr)
            return 2
    try:
        with QmpClient(_client_address(args.path), timeout=args.timeout) as client:
            result = client.command(args.qmp_command, arguments)
    except QmpError as error:
        print(error.desc, file=sys.stderr)
        return 1
    except KvmkitError as error:
        print(f"kvmkit qmp: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``qmp`` on an argparse subparsers object."""
    parser = subparsers.add_parser(
        "qmp", help="send one QMP command to a running VM",
        description="Connect to a QMP socket (kvmkit's or QEMU's), negotiate, run COMMAND "
                    "and print its result as JSON.")
    parser.add_argument("path", metavar="PATH",
                        help="unix socket path, unix:PATH or tcp:HOST:PORT")
    parser.add_argument("qmp_command", metavar="COMMAND", help="QMP command, e.g. query-status")
    parser.add_argument("arguments", metavar="ARGS", nargs="?",
                        help="command arguments as a JSON object")
    parser.add_argument("--timeout", type=seconds, default=30.0,
                        help="seconds to wait for the server (default 30)")
    parser.set_defaults(handler=cmd_qmp)
