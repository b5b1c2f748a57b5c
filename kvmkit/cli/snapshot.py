"""``kvmkit snapshot``: save a running VM's whole state, and look at saved ones.

``kvmkit snapshot create --qmp SOCKET DIR`` asks the VM behind the QMP
socket to write itself into DIR (QMP ``kvmkit-snapshot-save``; the VM
pauses for the copy and continues).  ``kvmkit run --restore DIR`` starts a
new VM from it, as many times as you like: each restore maps the memory
file copy-on-write.  ``kvmkit snapshot info DIR`` describes one.
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
    try:
        with QmpClient(_client_address(args.qmp), timeout=args.timeout) as client:
            info = client.command("kvmkit-snapshot-save", {"path": directory})
    except QmpError as error:
        print(f"kvmkit snapshot create: error: {error.desc}", file=sys.stderr)
        return 1
    print(f"snapshot {info['path']}: {info['memory-bytes'] >> 20} MiB of guest RAM "
          f"({info['written-bytes'] >> 20} MiB not zero) in {info['seconds'] * 1000:.0f} ms")
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
    c.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the VM (default 120)")
    c.set_defaults(handler=cmd_create)
    i = sub.add_parser("info", help="describe the snapshot in DIR")
    i.add_argument("directory", metavar="DIR")
    i.add_argument("--json", action="store_true", help="print JSON")
    i.set_defaults(handler=cmd_info)



