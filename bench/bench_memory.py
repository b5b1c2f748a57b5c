"""VMM memory overhead: resident memory of the VMM process minus the guest
RAM it has touched, kvmkit vs QEMU, for the same small guest and RAM size.

Both run a guest that touches almost no memory (the counter loop of
tests/guests/counter.S; QEMU gets the same loop behind a PVH entry stub from
bench_qmp.py, since it cannot enter 64-bit mode itself).  Guest RAM is
identified in /proc/PID/smaps as the largest anonymous mapping.

    python bench/bench_memory.py [--memory 256]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "guests"))
sys.path.insert(0, str(ROOT / "bench"))


def smaps_overhead(pid: int) -> tuple[int, int]:
    """(total RSS KiB, RSS of the largest anonymous mapping KiB)."""
    total = 0
    best_size, best_rss = 0, 0
    size = rss = 0
    anon = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if "-" in parts[0] and len(parts) >= 5 and ":" not in parts[0]:
                if anon and size > best_size:
                    best_size, best_rss = size, rss
                anon = len(parts) == 5 or parts[5].startswith("[anon")
                size = rss = 0
            elif parts[0] == "Size:":
                size = int(parts[1])
            elif parts[0] == "Rss:":
                rss = int(parts[1])
                total += rss
    if anon and size > best_size:
        best_rss = rss
    return total, best_rss


def measure(cmd: list[str], settle: float) -> tuple[int, int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        time.sleep(settle)
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[0]} exited early: {proc.stderr.read().decode()}")
        return smaps_overhead(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--memory", type=int, default=256, help="guest RAM in MiB (default 256)")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to run before measuring")
    args = ap.parse_args()
    import build as guest_build
    from bench_qmp import PVH_COUNTER
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        counter = guest_build.build("counter", tmp)
        ours = measure([sys.executable, "-m", "kvmkit.cli.main", "run", "--kernel", str(counter),
                        "-m", f"{args.memory}M", "--serial", "null"], args.settle)
        print(f"guest RAM {args.memory} MiB, counter guest, measured after {args.settle:g} s")
        print(f"  kvmkit: RSS {ours[0] / 1024:7.1f} MiB, guest RAM touched {ours[1] / 1024:6.1f} MiB, "
              f"VMM overhead {(ours[0] - ours[1]) / 1024:6.1f} MiB")
        qemu = shutil.which("qemu-system-x86_64")
        if qemu is None:
            print("  QEMU: qemu-system-x86_64 not installed; no ratio")
            return 0
        src, elf = tmp / "pvh.S", tmp / "pvh.elf"
        src.write_text(PVH_COUNTER)
        subprocess.run(["gcc", "-nostdlib", "-static", "-no-pie", "-Wl,-Ttext=0x100000",
                        "-Wl,--build-id=none", "-Wl,-z,max-page-size=0x1000", "-o", str(elf), str(src)],
                       check=True)
        theirs = measure([qemu, "-M", "microvm", "-enable-kvm", "-m", str(args.memory), "-kernel", str(elf),
                          "-nographic", "-nodefaults", "-display", "none"], args.settle)
        print(f"  QEMU:   RSS {theirs[0] / 1024:7.1f} MiB, guest RAM touched {theirs[1] / 1024:6.1f} MiB, "
              f"VMM overhead {(theirs[0] - theirs[1]) / 1024:6.1f} MiB")
        ratio = (ours[0] - ours[1]) / max(1, theirs[0] - theirs[1])
        print(f"  ratio kvmkit / QEMU overhead: {ratio:.2f}  (target <= 1.0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
