"""Exit cost: how many port-I/O exits per second kvmkit's vCPU loop handles,
against a C floor running the same KVM_RUN loop on the same VM.

The guest is the ring-3 test guest: N ``out`` instructions from user mode,
each a full exit to user space, then a write to the exit port.  The C floor
is a tiny shared library compiled here with gcc and called through ctypes on
a vCPU that kvmkit built (KVM insists every vCPU ioctl comes from the process
that created the VM).  Prints exits/s for both and the ratio (target >= 0.8).

    python bench/bench_exits.py [--exits 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "guests"))

C_LOOP = r"""
#include <linux/kvm.h>
#include <sys/ioctl.h>
long run_loop(int fd, struct kvm_run *run) {
    long exits = 0;
    for (;;) {
        if (ioctl(fd, KVM_RUN, 0) < 0) return -1;
        exits++;
        if (run->exit_reason != KVM_EXIT_IO) return -1000 - (long)run->exit_reason;
        if (run->io.direction == KVM_EXIT_IO_OUT && run->io.port == 0xF4) return exits;
    }
}
"""


def build_floor(tmp: Path) -> ctypes.CDLL:
    src = tmp / "floor.c"
    src.write_text(C_LOOP)
    so = tmp / "floor.so"
    subprocess.run(["gcc", "-O2", "-shared", "-fPIC", "-o", str(so), str(src)], check=True)
    lib = ctypes.CDLL(str(so))
    lib.run_loop.argtypes = (ctypes.c_int, ctypes.c_void_p)
    lib.run_loop.restype = ctypes.c_long
    return lib


def machine(kernel: Path, n: int):
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine
    return Machine(VmConfig.build(kernel, cmdline=str(n), memory="64M", serial="null"))


def run_kvmkit(kernel: Path, n: int) -> float:
    m = machine(kernel, n)
    try:
        t0 = time.perf_counter()
        m.start()
        m.wait(600)
        dt = time.perf_counter() - t0
        exits = sum(t.exits for t in m.threads)
        if m.exit_status != 1:
            raise SystemExit(f"kvmkit run failed: {m.exit_reason} {m.error} {bytes(m.debug_output)!r}")
    finally:
        m.close()
    return exits / dt


def run_floor(lib: ctypes.CDLL, kernel: Path, n: int) -> float:
    m = machine(kernel, n)
    try:
        vcpu = m.vcpus[0]
        run_addr = ctypes.addressof(ctypes.c_char.from_buffer(vcpu.page))
        t0 = time.perf_counter()
        exits = lib.run_loop(vcpu.fd, run_addr)
        dt = time.perf_counter() - t0
        if exits < n:
            raise SystemExit(f"C floor run failed: {exits}")
    finally:
        m.close()
    return exits / dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exits", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import build as guest_build
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        kernel = guest_build.build("ring3", tmp)
        lib = build_floor(tmp)
        ours, floor = [], []
        for _ in range(args.rounds):   # interleave: the machine is shared and noisy
            floor.append(run_floor(lib, kernel, args.exits))
            ours.append(run_kvmkit(kernel, args.exits))
    o, f = statistics.median(ours), statistics.median(floor)
    print(f"ring-3 port-write exits, {args.exits} per run, median of {args.rounds}:")
    print(f"  C floor (KVM_RUN loop in C): {f:10.0f} exits/s")
    print(f"  kvmkit vCPU loop (Python):   {o:10.0f} exits/s")
    print(f"  ratio kvmkit / C floor:      {o / f:10.2f}  (target >= 0.80)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
