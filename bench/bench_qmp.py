"""QMP latency: kvmkit's monitor beside QEMU's, measured in the same run.

Two figures, for the same guest code (a ring-0 loop incrementing a u64 at
guest-physical 0x5000 — ``tests/guests/counter.S`` for kvmkit, the same loop
behind a PVH entry stub for QEMU, which cannot enter 64-bit mode itself):

- round trip of ``query-status`` (median and p99 over ``--calls`` calls);
- ``stop`` → all vCPUs out of KVM_RUN: the time until ``stop`` returns (both
  servers answer only once every vCPU has stopped), median and p99 over
  ``--stops`` stop/cont cycles.

Both are timed with the same synchronous client (:class:`QmpClient`), so the
ratio compares servers, not clients.  Absolute numbers depend on the shared,
nested machines these run on: read the ratio.

    python bench/bench_qmp.py [--calls 1000] [--stops 50] [--cpus 1]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests" / "guests"))

from kvmkit.monitor.client import QmpClient  # noqa: E402
from kvmkit.monitor.server import QmpServer  # noqa: E402

COUNTER_ADDR = 0x5000

# The counter loop behind a PVH entry (XEN_ELFNOTE_PHYS32_ENTRY): QEMU starts
# it in 32-bit protected mode; the stub maps 1 GiB, enters long mode, then
# runs exactly the loop of tests/guests/counter.S.
PVH_COUNTER = r"""
.intel_syntax noprefix
.section .note.pvh, "a"
.align 4
.long 4, 4, 18
.asciz "Xen"
.long _start
.text
.code32
.global _start
_start:
    mov edi, 0x10000
    xor eax, eax
    mov ecx, 3 * 4096 / 4
    rep stosd
    mov dword ptr [0x10000], 0x11003
    mov dword ptr [0x11000], 0x12003
    mov edi, 0x12000
    mov eax, 0x83
    mov ecx, 512
1:  mov dword ptr [edi], eax
    add eax, 0x200000
    add edi, 8
    loop 1b
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, 0x10000
    mov cr3, eax
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100
    wrmsr
    lgdt [gdt_ptr]
    mov eax, cr0
    or eax, 0x80000001
    mov cr0, eax
    ljmp 0x08, offset long_mode
.code64
long_mode:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov rdi, 0x5000
2:  inc qword ptr [rdi]
    jmp 2b
.align 8
gdt:
    .quad 0, 0x00af9b000000ffff, 0x00cf93000000ffff
gdt_ptr:
    .word gdt_ptr - gdt - 1
    .long gdt
"""


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def time_calls(client: QmpClient, calls: int) -> list[float]:
    for _ in range(50):
        client.command("query-status")
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        client.command("query-status")
        samples.append(time.perf_counter() - started)
    return samples


def time_stops(client: QmpClient, stops: int, progress: Callable[[], int]) -> list[float]:
    samples = []
    for i in range(stops):
        time.sleep(0.005)                            # let the vCPUs get back into the guest
        started = time.perf_counter()
        client.command("stop")
        samples.append(time.perf_counter() - started)
        if i == 0:                                   # sanity: stopped means stopped
            frozen = progress()
            time.sleep(0.05)
            if progress() != frozen:
                raise SystemExit("the guest kept running after stop returned")
        client.command("cont")
    return samples


def wait_running(progress: Callable[[], int], what: str) -> None:
    deadline = time.monotonic() + 30
    first = progress()
    while progress() == first:
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: the guest's counter does not advance")
        time.sleep(0.01)


def bench_kvmkit(workdir: Path, calls: int, stops: int, cpus: int) -> dict[str, list[float]]:
    import build as guest_build                      # tests/guests/build.py
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine

    kernel = guest_build.build("counter", Path.home() / ".cache" / "kvmkit" / "test-guests")
    machine = Machine(VmConfig.build(kernel, memory="64M", cpus=cpus)).start()
    try:
        def progress() -> int:
            return machine.memory.read_u64(COUNTER_ADDR)

        wait_running(progress, "kvmkit")
        with QmpServer(machine, f"unix:{workdir / 'kvmkit.sock'}") as server, \
                QmpClient(server.address) as client:
            return {"rtt": time_calls(client, calls), "stop": time_stops(client, stops, progress)}
    finally:
        machine.close()


def bench_qemu(workdir: Path, calls: int, stops: int, cpus: int) -> dict[str, list[float]] | None:
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        print("qemu-system-x86_64 not found (apt-get install -y qemu-system-x86): "
              "QEMU column skipped", file=sys.stderr)
        return None
    source, kernel = workdir / "pvh-counter.S", workdir / "pvh-counter.elf"
    source.write_text(PVH_COUNTER)
    subprocess.run(["gcc", "-nostdlib", "-static", "-no-pie", "-Wl,-Ttext=0x100000",
                    "-Wl,--build-id=none", "-Wl,-z,max-page-size=0x1000", "-o", str(kernel),
                    str(source)], check=True)
    sock = workdir / "qemu.sock"
    proc = subprocess.Popen([qemu, "-M", "microvm", "-enable-kvm", "-m", "64", "-smp", str(cpus),
                             "-kernel", str(kernel), "-qmp", f"unix:{sock},server=on,wait=off",
                             "-nographic", "-nodefaults", "-display", "none"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"QEMU did not start: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.01)
        with QmpClient(f"unix:{sock}") as client:
            def progress() -> int:
                text = client.command("human-monitor-command",
                                      {"command-line": f"xp /1gx {COUNTER_ADDR:#x}"})
                return int(text.split(":")[1], 16)

            wait_running(progress, "QEMU")
            result = {"rtt": time_calls(client, calls), "stop": time_stops(client, stops, progress)}
            client.command("quit")
        return result
    finally:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def report(kvmkit: dict[str, list[float]], qemu: dict[str, list[float]] | None) -> None:
    rows = [("query-status round trip", "rtt"), ("stop -> all vCPUs stopped", "stop")]
    print(f"{'':34}{'kvmkit':>12}{'QEMU':>12}{'kvmkit/QEMU':>13}")
    for label, key in rows:
        for stat, fn in (("median", statistics.median), ("p99", lambda s: percentile(s, 0.99))):
            ours = fn(kvmkit[key]) * 1e6
            line = f"{label + ' ' + stat + ' (us)':34}{ours:12.1f}"
            if qemu is not None:
                theirs = fn(qemu[key]) * 1e6
                line += f"{theirs:12.1f}{ours / theirs:12.2f}x"
            print(line)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=1000, help="query-status calls (1000)")
    parser.add_argument("--stops", type=int, default=50, help="stop/cont cycles (50)")
    parser.add_argument("--cpus", type=int, default=1, help="vCPUs in both VMs (1)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-qmp-", dir="/tmp") as tmp:
        workdir = Path(tmp)
        ours = bench_kvmkit(workdir, args.calls, args.stops, args.cpus)
        theirs = bench_qemu(workdir, args.calls, args.stops, args.cpus)
    print(f"QMP latency, {args.cpus} vCPU(s), {args.calls} query-status calls, "
          f"{args.stops} stop/cont cycles, same client for both")
    report(ours, theirs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
