"""``kvmkit guest``: build the guest kernels and initramfs images, show their paths.

Thin by design: it parses, calls :mod:`kvmkit.guest.assets`, and turns a
:class:`kvmkit.errors.KvmkitError` into one line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections.abc import Callable
from typing import Any

from kvmkit.errors import KvmkitError
from kvmkit.guest.assets import GUEST_NAMES, GuestAssets, guest


def _print(assets: GuestAssets) -> None:
    print(f"{assets.name}.bzimage: {assets.bzimage}")
    print(f"{assets.name}.vmlinux: {assets.vmlinux}")
    print(f"{assets.name}.initrd:  {assets.initrd}")
    print(f"{assets.name}.cmdline: {assets.cmdline}")


def _names(which: str) -> tuple[str, ...]:
    return GUEST_NAMES if which == "all" else (which,)


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn a KvmkitError into one line on stderr and status 1, never a traceback."""

    @functools.wraps(handler)
    def wrapper(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except KvmkitError as err:
            print(f"kvmkit guest: error: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("kvmkit guest: interrupted", file=sys.stderr)
            return 130

    return wrapper


@_guarded
def cmd_build(args: argparse.Namespace) -> int:
    """Build (or find in the cache) the chosen guests and print their paths."""
    for name in _names(args.which):
        started = time.monotonic()
        assets = guest(name, build=True, force=args.force)
        _print(assets)
        print(f"{name}.ready-in: {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


@_guarded
def cmd_path(args: argparse.Namespace) -> int:
    """Print the paths of already-built guests; non-zero if one is not built."""
    for name in _names(args.which):
        _print(guest(name, build=False))
    return 0


def add_parser(subparsers: Any) -> None:
    """Register ``guest`` and its sub-subcommands on the ``kvmkit`` parser."""
    parser = subparsers.add_parser("guest", help="build and locate the guest kernels and initramfs images",
                                   description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="guest_command", required=True, metavar="{build,path}")
    build = sub.add_parser("build", help="build guest assets (cached; rebuilt only when inputs change)")
    build.add_argument("which", nargs="?", choices=(*GUEST_NAMES, "all"), default="all")
    build.add_argument("--force", action="store_true", help="rebuild even if the cache is up to date")
    build.set_defaults(handler=cmd_build)
    path = sub.add_parser("path", help="print the paths of built guests (exit 1 if not built)")
    path.add_argument("which", nargs="?", choices=(*GUEST_NAMES, "all"), default="fast")
    path.set_defaults(handler=cmd_path)


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m kvmkit.cli.guest``) until ``kvmkit.cli.main`` exists."""
    parser = argparse.ArgumentParser(prog="kvmkit")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["guest", *(sys.argv[1:] if argv is None else argv)])
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
