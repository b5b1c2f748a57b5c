"""The manager (``kvmkit virsh``) on this host: how fast domains start, how
long a command takes with many domains defined, and what save/restore of
a running domain costs.

- start rate: tiny ``idle`` guests (64 MiB, halted: they cost no CPU once
  up), ``Host.start`` from call to running (the VMM's monitor answers),
  one after another and from two threads; domains per second, and per
  core (this host has 2), beside Firecracker's published figure of
  5 microVMs per second per core (its README: "launch ... at a rate of up
  to 5 microVMs per host core per second") as context — Firecracker is a
  compiled VMM started by a compiled jailer, kvmkit starts a Python
  interpreter per VM;
- ``list``: ``kvmkit virsh list --all`` as a subprocess (what a user
  waits for, interpreter start included) and ``Host.domains()`` in
  process, with 50 domains defined (10 of them running), beside
  ``virsh domname`` of one domain (the floor of any command);
- save/restore: ``virsh save`` then ``virsh restore`` of a running tiny
  guest (its RAM is written sparse and mapped back copy-on-write).

    python bench/bench_manager.py [--domains 50] [--starts 20]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "guests"))
FIRECRACKER_PER_CORE = 5.0


def xml(name: str, kernel: Path) -> str:
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64'>hvm</type><kernel>{kernel}</kernel></os>"
            f"<devices><serial type='pty'/><console type='pty'/></devices></domain>")


def virsh(state: Path, *args: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "kvmkit.cli.main", "virsh", "-q", "-c", str(state), *args],
                         capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise SystemExit(f"virsh {' '.join(args)}: {res.stderr.strip()}")
    return time.monotonic() - t


def start_rate(host, names: list[str], threads: int) -> float:
    """Domains started per second (start called → running)."""
    todo = list(names)
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                if not todo:
                    return
                name = todo.pop()
            host.start(name)
    t = time.monotonic()
    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    elapsed = time.monotonic() - t
    for name in names:
        host.destroy(name)
    return len(names) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--domains", type=int, default=50, help="domains defined for the list latency")
    ap.add_argument("--starts", type=int, default=20, help="domains started for the start rate")
    ap.add_argument("--running", type=int, default=10, help="of --domains, how many run during list")
    args = ap.parse_args()
    import build as guest_build
    from kvmkit.manager import Host
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvmkit" / "test-guests"
    idle = guest_build.build("idle", cache)
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="bench-manager-") as tmp:
        state = Path(tmp) / "state"
        host = Host(state)
        try:
            names = [f"d{i:03d}" for i in range(max(args.domains, args.starts))]
            for n in names:
                host.define(xml(n, idle))
            host.start(names[0])                      # warm the page cache (interpreter, kvmkit)
            host.destroy(names[0])
            serial = start_rate(host, names[:args.starts], 1)
            parallel = start_rate(host, names[:args.starts], 2)
            print(f"start rate ({args.starts} tiny guests, start -> running): "
                  f"{serial:.2f}/s one at a time, {parallel:.2f}/s from 2 threads "
                  f"= {parallel / cores:.2f}/s per core ({cores} cores); "
                  f"Firecracker publishes {FIRECRACKER_PER_CORE:g}/s per core "
                  f"({parallel / cores / FIRECRACKER_PER_CORE:.2f}x)")
            for n in names[:args.running]:
                host.start(n)
            cli = [virsh(state, "list", "--all") for _ in range(7)]
            floor = [virsh(state, "domname", names[-1]) for _ in range(7)]
            api = []
            for _ in range(7):
                t = time.monotonic()
                infos = host.domains()
                api.append(time.monotonic() - t)
            assert len(infos) == len(names)
            print(f"list --all with {len(names)} defined ({args.running} running): "
                  f"{statistics.median(cli) * 1000:.0f} ms as a command "
                  f"(a one-domain command: {statistics.median(floor) * 1000:.0f} ms), "
                  f"Host.domains() {statistics.median(api) * 1000:.0f} ms in process")
            saved = Path(tmp) / "saved"
            t_save = virsh(state, "save", names[0], str(saved))
            t_restore = virsh(state, "restore", str(saved))
            print(f"save of a running 64 MiB tiny guest: {t_save * 1000:.0f} ms, restore to running: "
                  f"{t_restore * 1000:.0f} ms (commands, interpreter start included)")
        finally:
            for info in host.domains(inactive=False):
                host.destroy(info.name)


if __name__ == "__main__":
    main()
