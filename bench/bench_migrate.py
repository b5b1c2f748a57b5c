"""Live migration: kvmkit beside QEMU on this host, in the same run.

For each guest, source and destination are two processes on this machine
migrating over TCP on loopback, steered over QMP with the same client and
the same parameters (downtime-limit 300 ms, QEMU's default; max-bandwidth
set high so the link, not the cap, decides): total time, downtime, bytes
sent, and the kvmkit/QEMU ratios.

Guests (same RAM size for both VMMs; QEMU cannot run a Linux kernel here,
so both run tiny ring-0 guests):
- *idle*: halts forever (kvmkit ``tests/guests/idle.S``; for QEMU the same
  ``cli; hlt`` loop behind a PVH entry stub, ``-M microvm``);
- *writer*: rewrites 4 MiB continuously (kvmkit ``tests/guests/memwriter.S``;
  for QEMU the same loop behind the PVH stub).

    python bench/bench_migrate.py [--memory 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "guests"))
sys.path.insert(0, str(REPO / "bench"))

import build as guest_build  # noqa: E402
from bench_qmp import PVH_COUNTER  # noqa: E402

from kvmkit.monitor.address import parse_qmp_address  # noqa: E402
from kvmkit.monitor.client import QmpClient  # noqa: E402

LOOP_COUNTER = """    mov rdi, 0x5000
2:  inc qword ptr [rdi]
    jmp 2b
"""
LOOP_IDLE = """    cli
2:  hlt
    jmp 2b
"""
LOOP_WRITER = """    xor r8, r8
3:  inc r8
    mov rdi, 0x1000000
    xor ecx, ecx
4:  mov qword ptr [rdi], r8
    mov qword ptr [rdi + 8], rcx
    add rdi, 4096
    inc ecx
    cmp ecx, 1024
    jb 4b
    mov qword ptr [0x5000], r8
    jmp 3b
"""
PARAMS = {"downtime-limit": 300, "max-bandwidth": 8 << 30}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_path(path: Path, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 60
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
        time.sleep(0.01)
    time.sleep(0.05)                    # bound before listening


def migrate(qmp: Path, uri: str) -> dict:
    with QmpClient(parse_qmp_address(f"unix:{qmp}"), timeout=60) as c:
        c.command("migrate-set-parameters", PARAMS)
        time.sleep(0.3)                 # let the guest run (and dirty) a little
        c.command("migrate", {"uri": uri})
        while True:
            info = c.command("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.005)
        c.command("quit")
    if info["status"] != "completed":
        raise SystemExit(f"migration failed: {info}")
    return {"total": info["total-time"], "downtime": info["downtime"], "bytes": info["ram"]["transferred"]}


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def kvmkit_round(work: Path, guest: str, memory: int) -> dict:
    kernel = guest_build.build(guest, Path.home() / ".cache" / "kvmkit" / "test-guests")
    port, qmp, dqmp = free_port(), work / "k-src.qmp", work / "k-dst.qmp"
    for p in (qmp, dqmp):
        p.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "kvmkit.cli.main", "run", "--serial", "null"]
    src = subprocess.Popen(cmd + ["--kernel", str(kernel), "-m", f"{memory}M", "--qmp", f"unix:{qmp},server,wait=off"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dst = subprocess.Popen(cmd + ["--incoming", f"tcp:127.0.0.1:{port}", "--qmp", f"unix:{dqmp},server,wait=off"],
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_path(qmp, src, "kvmkit source")
        time.sleep(0.5)                 # the destination listens
        out = migrate(qmp, f"tcp:127.0.0.1:{port}")
        wait_path(dqmp, dst, "kvmkit destination")
        with QmpClient(parse_qmp_address(f"unix:{dqmp}")) as c:
            c.command("quit")
        return out
    finally:
        stop(src, dst)


def qemu_kernel(work: Path, loop: str) -> Path:
    src, elf = work / f"pvh-{abs(hash(loop))}.S", work / f"pvh-{abs(hash(loop))}.elf"
    src.write_text(PVH_COUNTER.replace(LOOP_COUNTER, loop))
    subprocess.run(["gcc", "-nostdlib", "-static", "-no-pie", "-Wl,-Ttext=0x100000",
                    "-Wl,--build-id=none", "-Wl,-z,max-page-size=0x1000", "-o", str(elf), str(src)], check=True)
    return elf


def qemu_round(work: Path, qemu: str, loop: str, memory: int) -> dict:
    kernel = qemu_kernel(work, loop)
    port, qmp = free_port(), work / "q-src.qmp"
    qmp.unlink(missing_ok=True)
    base = [qemu, "-M", "microvm", "-enable-kvm", "-m", str(memory), "-kernel", str(kernel),
            "-nographic", "-nodefaults", "-display", "none"]
    src = subprocess.Popen(base + ["-qmp", f"unix:{qmp},server=on,wait=off"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dst = subprocess.Popen(base + ["-incoming", f"tcp:127.0.0.1:{port}"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_path(qmp, src, "QEMU source")
        time.sleep(0.5)
        return migrate(qmp, f"tcp:127.0.0.1:{port}")
    finally:
        dst.kill()
        stop(src, dst)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--memory", type=int, default=256, help="guest RAM in MiB (default 256)")
    ap.add_argument("--rounds", type=int, default=3, help="migrations per guest and VMM; medians (default 3)")
    args = ap.parse_args()
    qemu = shutil.which("qemu-system-x86_64")
    with tempfile.TemporaryDirectory(prefix="bench-migrate-") as tmp:
        work = Path(tmp)
        print(f"guest RAM {args.memory} MiB, tcp on loopback, downtime-limit {PARAMS['downtime-limit']} ms, "
              f"max-bandwidth {PARAMS['max-bandwidth'] >> 20} MiB/s; medians of {args.rounds}")
        print(f"{'guest':8} {'VMM':7} {'total ms':>9} {'downtime ms':>12} {'MiB sent':>9}")
        for name, guest, loop in (("idle", "idle", LOOP_IDLE), ("writer", "memwriter", LOOP_WRITER)):
            rows = {"kvmkit": [kvmkit_round(work, guest, args.memory) for _ in range(args.rounds)]}
            if qemu:
                rows["QEMU"] = [qemu_round(work, qemu, loop, args.memory) for _ in range(args.rounds)]
            med = {vmm: {k: statistics.median(r[k] for r in runs) for k in ("total", "downtime", "bytes")}
                   for vmm, runs in rows.items()}
            for vmm, m in med.items():
                print(f"{name:8} {vmm:7} {m['total']:9.0f} {m['downtime']:12.0f} {m['bytes'] / 1048576:9.1f}")
            if "QEMU" in med:
                k, q = med["kvmkit"], med["QEMU"]
                ratio = {x: k[x] / q[x] if q[x] else float("inf") for x in k}
                print(f"{name:8} ratio   {ratio['total']:8.2f}x {ratio['downtime']:11.2f}x {ratio['bytes']:8.2f}x"
                      "   (kvmkit / QEMU; lower is better)")
        if not qemu:
            print("qemu-system-x86_64 not found: QEMU rows skipped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
