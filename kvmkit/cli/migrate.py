"""``kvmkit migrate --qmp SOCKET URI``: live-migrate the VM behind a QMP
socket and follow it with a progress bar.

Start the destination first (``kvmkit run --incoming tcp:0:4444`` on the
other host, or ``unix:PATH``), then run this against the source.  The
source keeps running while memory is copied, pauses only for the last
pages and the device state, and ends in run state ``postmigrate``.
``file:PATH`` writes a stream that ``kvmkit run --incoming file:PATH``
starts from later; ``exec:CMD`` pipes it into a command.

Exit status 0 when the migration completed; 1 with the reason otherwise
(the source then runs on).  Ctrl-C cancels the migration.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from kvmkit.errors import ConfigError
from kvmkit.sizes import parse_size


def _bar(enabled: bool, total: int):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="migrate",
                file=sys.stderr, leave=True)


def cmd_migrate(args: argparse.Namespace) -> int:
    from kvmkit.cli.qmp import _client_address
    from kvmkit.monitor.client import QmpClient
    from kvmkit.monitor.protocol import QmpError
    from kvmkit.vmm.migration.transport import parse_uri
    parse_uri(args.uri)                       # a bad URI fails here, before the VM is touched
    params: dict[str, Any] = {}
    if args.downtime_limit is not None:
        if args.downtime_limit < 0:
            raise ConfigError(f"--downtime-limit {args.downtime_limit}: must be 0 or more milliseconds")
        params["downtime-limit"] = args.downtime_limit
    if args.max_bandwidth is not None:
        params["max-bandwidth"] = parse_size(args.max_bandwidth, what="--max-bandwidth")
    bar = None
    try:
        with QmpClient(_client_address(args.qmp), timeout=args.timeout) as client:
            if params:
                client.command("migrate-set-parameters", params)
            client.command("migrate", {"uri": args.uri})
            shown = 0
            try:
                while True:
                    info = client.command("query-migrate")
                    ram = info.get("ram")
                    if ram and bar is None:
                        bar = _bar(args.progress if args.progress is not None else sys.stderr.isatty(),
                                   ram["total"])
                    if bar is not None and ram:
                        done = min(ram["total"] - ram["remaining"], ram["total"])
                        bar.update(done - shown)
                        shown = done
                        bar.set_postfix_str(f"{info['status']}, pass {ram['dirty-sync-count']}")
                    if info["status"] in ("completed", "failed", "cancelled"):
                        break
                    time.sleep(0.1)
            except KeyboardInterrupt:
                client.command("migrate_cancel")
                while info["status"] not in ("failed", "cancelled", "completed"):
                    time.sleep(0.05)
                    info = client.command("query-migrate")
    except QmpError as error:
        print(f"kvmkit migrate: error: {error.desc}", file=sys.stderr)
        return 1
    finally:
        if bar is not None:
            bar.close()
    if info["status"] == "completed":
        ram = info["ram"]
        print(f"migrated to {args.uri}: {ram['transferred'] >> 20} MiB in {info['total-time']} ms, "
              f"downtime {info.get('downtime', 0)} ms, {ram['dirty-sync-count']} passes")
        return 0
    why = info.get("error-desc", "migration cancelled" if info["status"] == "cancelled" else info["status"])
    print(f"kvmkit migrate: error: {why} (the VM keeps running on the source)", file=sys.stderr)
    return 1


def add_parser(subparsers: Any) -> None:
    from kvmkit.cli.qmp import seconds
    p = subparsers.add_parser("migrate", help="live-migrate a running VM (through its QMP socket) to URI",
                              description=__doc__.split("\n\n", 1)[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qmp", required=True, metavar="SOCKET", help="the source VM's QMP socket (PATH, unix:PATH, tcp:H:P)")
    p.add_argument("uri", metavar="URI", help="tcp:HOST:PORT, unix:PATH, file:PATH or exec:CMD")
    p.add_argument("--downtime-limit", type=int, metavar="MS",
                   help="longest pause allowed for the final copy, in ms (QMP downtime-limit; default 300)")
    p.add_argument("--max-bandwidth", metavar="BYTES/S",
                   help="bandwidth cap while the VM runs, e.g. 1G (QMP max-bandwidth; default 128M)")
    p.add_argument("--progress", "-p", action="store_true", default=None,
                   help="show the progress bar even when stderr is not a terminal")
    p.add_argument("--timeout", type=seconds, default=30.0, help="seconds to wait for the QMP server (default 30)")
    p.set_defaults(handler=cmd_migrate)
