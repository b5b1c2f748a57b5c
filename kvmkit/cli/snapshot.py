"""``kvmkit snapshot``: save a running VM's whole state, and look at saved ones.

``kvmkit snapshot create --qmp SOCKET DIR`` asks the VM behind the QMP
socket to write itself into DIR (QMP ``kvmkit-snapshot-save``; the VM
pauses for the copy and continues).  ``kvmkit run --restore DIR`` starts a
new VM from it, as many times as you like: each restore maps the memory
file copy-on-write.  ``kvmkit snapshot info DIR`` describes one.

``kvmkit snapshot create --qmp SOCKET --diff-from BASE DIR`` writes only the
pages the guest (and its devices) dirtied since BASE, which must be the
VM's last snapshot; DIR restores like any snapshot, reading through to
BASE.  ``kvmkit snapshot merge DIR`` folds a diff onto its base (the base
becomes the later state; DIR is removed).  Do not merge into a base that
running restores still map: they would see its pages change.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any



def cmd_create(args: argparse.Namespace) -> int:
    from kvmkit.cli.qmp import _client_address
    from kvmkit.monitor.client import QmpClient
    from kvmkit.monitor.protocol import QmpError
    directory = os.path.abspath(args.directory)
    request = {"path": directory}
    if args.diff_from:
        request["diff-from"] = os.path.abspath(args.diff_from)
    try:
        with QmpClient(_client_address(args.qmp), timeout=args.timeout) as client:
            info = client.command("kvmkit-snapshot-save", request)
    except QmpError as error:
        print(f"kvmkit snapshot create: error: {error.desc}", file=sys.stderr)
        return 1
    what = "dirtied since the base" if args.diff_from else "not zero"
    print(f"snapshot {info['path']}: {info['memory-bytes'] >> 20} MiB of guest RAM "
          f"({info['written-bytes'] / 1048576:.1f} MiB {what}) in {info['seconds'] * 1000:.0f} ms")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from kvmkit.vmm.snapshot_diff import merge
    base = merge(args.directory)
    print(f"merged {os.path.abspath(args.directory)} into {base} (the diff directory was removed)")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from kvmkit.vmm.snapshot import Snapshot
    snap = Snapshot.open(args.directory)
    body, cfg = snap.body, snap.body["config"]
    info: dict[str, Any] = {
        "path": str(snap.path), "saved-at": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(body["saved-at"])),
        "kernel": cfg["kernel"], "initrd": cfg["initrd"], "cmdline": cfg["cmdline"],
        "memory": cfg["memory"], "cpus": cfg["cpus"], "host-compat": body["host-compat"],
        "devices": [d["name"] for d in body["virtio"]],
        "memory-file-bytes": body["memory-file-size"],
        "memory-file-allocated": os.stat(snap.memory_path).st_blocks * 512,
    }
    if snap.base is not None:
        info["diff-from"] = str(snap.base.path)
        info["diff-pages"] = sum(n for _, n in body["diff-pages"])
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        for k, v in info.items():
            print(f"{k + ':':22} {v}")
    return 0


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("snapshot", help="save a running VM's state; inspect a saved one",
                              description=__doc__.split("\n\n", 1)[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="snapshot_command", metavar="SUBCOMMAND", required=True)
    c = sub.add_parser("create", help="write a running VM (through its QMP socket) into DIR")
    c.add_argument("--qmp", required=True, metavar="SOCKET", help="the VM's QMP socket (PATH, unix:PATH, tcp:H:P)")
    c.add_argument("directory", metavar="DIR", help="snapshot directory (created)")
    c.add_argument("--diff-from", metavar="BASE",
                   help="write only the pages dirtied since BASE, the VM's last snapshot (a diff snapshot)")
    c.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the VM (default 120)")
    c.set_defaults(handler=cmd_create)
    mg = sub.add_parser("merge", help="fold the diff snapshot DIR onto its base (DIR is removed)")
    mg.add_argument("directory", metavar="DIR")
    mg.set_defaults(handler=cmd_merge)
    i = sub.add_parser("info", help="describe the snapshot in DIR")
    i.add_argument("directory", metavar="DIR")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(handler=cmd_info)



