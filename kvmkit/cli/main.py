"""``kvmkit``: the command line.  Thin: it parses, then calls the layers
below.  Every subcommand module registers itself with ``add_parser``."""

from __future__ import annotations

import argparse
import logging
import sys

from kvmkit import __version__
from kvmkit.errors import KvmkitError, describe_host_error

SUBCOMMANDS = ("run", "snapshot", "migrate", "guest", "img", "qmp", "virsh")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``only``) one with just that subcommand, so a
    quick ``kvmkit img info`` does not import the VMM, the monitor and the
    guest builder."""
    parser = argparse.ArgumentParser(
        prog="kvmkit",
        description="The user-space half of a KVM virtualization stack: boot Linux guests on "
                    "/dev/kvm, steer them over QMP, and manage disk images.",
        epilog="Run 'kvmkit COMMAND --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"kvmkit {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (-v: what the VMM applies, -vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    import importlib
    for name in SUBCOMMANDS if only is None else (only,):
        importlib.import_module(f"kvmkit.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(first if first in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    level = logging.WARNING if args.verbose == 0 else logging.INFO if args.verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="kvmkit: %(message)s")
    handler = getattr(args, "handler", None) or getattr(args, "func")
    try:
        return int(handler(args) or 0)
    except KvmkitError as e:
        print(f"kvmkit {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (OSError, MemoryError) as e:
        # The host refused something no boundary above named (the boundaries
        # should: this is the net under them).  One line; -vv shows where.
        logging.getLogger("kvmkit").debug("host error", exc_info=True)
        print(f"kvmkit {args.command}: error: {describe_host_error(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
