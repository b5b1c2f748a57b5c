"""Memory per idle VM with and without KSM: N identical guests (default 10),
each its own ``kvmkit run`` process, once with ``--ksm off`` and once with
``--ksm on`` while the host's ksmd runs fast; for each VM the VMM's RSS,
its proportional share (PSS: a page KSM merged across VMs counts 1/N in
each), the guest RAM resident and the pages KSM merged.

    python bench/bench_memory_ksm.py                 # tiny guest: 4 MiB of identical image, then idle
    python bench/bench_memory_ksm.py --guest fast    # kvmkit's Linux guest, idle at its shell prompt

The ratio printed last is PSS per VM with KSM over without it (lower is
better).  ksmd's settings are restored afterwards.  Needs root.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "guests"))
sys.path.insert(0, str(ROOT / "bench"))

from kvmkit.host import ksm  # noqa: E402

PROMPT = b"root@kvmkit:~# "


def rollup(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        out[key] = int(value.split()[0])
    return out


def start(guest: str, count: int, ksm_on: bool, workdir: str, memory: str) -> list[subprocess.Popen]:
    if guest == "fast":
        from kvmkit.guest.assets import fast_guest
        g = fast_guest(build=False)
        kernel = ["--kernel", str(g.vmlinux), "--initrd", str(g.initrd), "--cmdline", g.cmdline]
    else:
        import build
        kernel = ["--kernel", str(build.build("ksm", Path.home() / ".cache" / "kvmkit" / "test-guests"))]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = []
    for i in range(count):
        log = os.path.join(workdir, f"console{i}.log")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "kvmkit.cli.main", "run", *kernel, "-m", memory, "--serial", f"file:{log}",
             "--ksm", "on" if ksm_on else "off"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs


def wait_idle(guest: str, procs, workdir: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for i, p in enumerate(procs):
        log = Path(workdir, f"console{i}.log")
        want = PROMPT if guest == "fast" else b""
        while True:
            if p.poll() is not None:
                raise SystemExit(f"VM {i} exited with {p.returncode}")
            if log.exists() and (not want or want in log.read_bytes()):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"VM {i} did not become idle in {timeout:.0f}s")
            time.sleep(0.2)
    time.sleep(2.0 if guest == "fast" else 1.0)


def settle(procs, timeout: float) -> None:
    """Until KSM has merged what it will (two full scans without a change)."""
    deadline = time.monotonic() + timeout
    last, stable = -1, 0
    scans = ksm.host_figures().get("full_scans", 0)
    while time.monotonic() < deadline and stable < 2:
        time.sleep(0.5)
        now_scans = ksm.host_figures().get("full_scans", 0)
        if now_scans == scans:
            continue
        scans = now_scans
        merged = sum(ksm.process_figures(p.pid).get("ksm_merging_pages", 0) for p in procs)
        stable = stable + 1 if merged == last else 0
        last = merged


def guest_ram(pid: int) -> tuple[int, int]:
    """(Rss, Pss) KiB of guest RAM: the process's largest anonymous mapping."""
    best = (0, 0, 0)
    size = rss = pss = 0
    anon = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in list(f) + ["0-0 ---p 0 0 0\n"]:
            parts = line.split()
            if "-" in parts[0] and ":" not in parts[0]:
                if anon and size > best[0]:
                    best = (size, rss, pss)
                anon = len(parts) == 5 or parts[5].startswith(("[anon", "/memfd:kvmkit-ram"))
                size = rss = pss = 0
            elif parts[0] == "Size:":
                size = int(parts[1])
            elif parts[0] == "Rss:":
                rss = int(parts[1])
            elif parts[0] == "Pss:":
                pss = int(parts[1])
    return best[1], best[2]


def measure(procs) -> dict[str, float]:
    rows = []
    for p in procs:
        r = rollup(p.pid)
        guest_rss, guest_pss = guest_ram(p.pid)
        rows.append({"rss": r["Rss"], "pss": r["Pss"], "guest": guest_rss, "guest_pss": guest_pss,
                     "merged": ksm.process_figures(p.pid).get("ksm_merging_pages", 0) * 4})
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def run(guest: str, count: int, ksm_on: bool, memory: str, timeout: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix=f"kvmkit-ksm-bench-{os.getpid()}-") as workdir:
        procs = start(guest, count, ksm_on, workdir, memory)
        try:
            wait_idle(guest, procs, workdir, timeout)
            if ksm_on:
                settle(procs, timeout)
            else:
                time.sleep(3)             # ksmd runs here too: nothing of ours is mergeable
            return measure(procs)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--guest", choices=("tiny", "fast"), default="tiny")
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--memory", default=None, help="guest RAM (default 64M tiny, 128M fast)")
    ap.add_argument("--timeout", type=float, default=300.0)
    a = ap.parse_args()
    memory = a.memory or ("128M" if a.guest == "fast" else "64M")
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # ksmd's settings and the VMs still get cleaned up
    with ksm.tuned(run=1, pages_to_scan=20000, sleep_millisecs=10):
        off = run(a.guest, a.count, False, memory, a.timeout)
        on = run(a.guest, a.count, True, memory, a.timeout)
    print(f"{a.count} idle {a.guest} guests of {memory}, per VM (KiB):")
    print(f"{'':10} {'RSS':>8} {'PSS':>8} {'guest RSS':>10} {'guest PSS':>10} {'KSM-merged':>11}")
    for label, r in (("KSM off", off), ("KSM on", on)):
        print(f"{label:10} {r['rss']:8.0f} {r['pss']:8.0f} {r['guest']:10.0f} {r['guest_pss']:10.0f} "
              f"{r['merged']:11.0f}")
    print(f"PSS with KSM / without: {on['pss'] / off['pss']:.2f} for the whole VMM, "
          f"{on['guest_pss'] / max(off['guest_pss'], 1):.2f} for guest RAM")


if __name__ == "__main__":
    main()
