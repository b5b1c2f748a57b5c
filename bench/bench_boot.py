"""Boot time: wall time from VMM process start to each console milestone,
kvmkit vs QEMU, same kernel, initrd, command line, memory and vCPUs.

kvmkit boots the fast guest's ELF vmlinux directly.  QEMU gets its fastest
direct-kernel boot: ``-M microvm`` with the same vmlinux when the kernel has
a PVH entry note (CONFIG_PVH), else the bzImage.  Both get the same guest
command line, including what kvmkit's host-compat adds on emulating hosts
(and QEMU gets CX16 hidden from its CPU model, as kvmkit hides it).
On such hosts QEMU dies at the kernel's int3 self-test (HOST-NOTES); the
table then shows where it stopped.

    python bench/bench_boot.py [--timeout 600] [--cpus 1]
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import shutil
import subprocess
import sys
import time
from pathlib import Path

MILESTONES = (
    ("first console line", re.compile(rb"Linux version")),
    ("both/all CPUs up", re.compile(rb"smp: Brought up")),
    ("initramfs unpacked", re.compile(rb"Freeing initrd memory|Trying to unpack rootfs")),
    ("kernel runs /init", re.compile(rb"Run /init as init process")),
    ("/init marker", re.compile(rb"kvmkit-guest: init started")),
)
END = re.compile(rb"Kernel panic|reboot: Restarting|kvmkit-guest: run exit")


def has_pvh_note(vmlinux: Path) -> bool:
    out = subprocess.run(["readelf", "-n", str(vmlinux)], capture_output=True, text=True).stdout
    return "Xen" in out and ("PHYS32_ENTRY" in out or "0x00000012" in out or "Unknown note type: (0x00000012)" in out)


def watch(cmd: list[str], timeout: float, log: Path) -> tuple[dict[str, float], str]:
    """Run ``cmd``; return milestone times (s since start) and how it ended."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    seen: dict[str, float] = {}
    buf = b""
    ended = "timeout"
    with open(log, "wb") as out:
        while time.monotonic() - start < timeout:
            if not sel.select(timeout=1.0):
                if proc.poll() is not None:
                    ended = f"exited ({proc.returncode})"
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                proc.wait()
                ended = f"exited ({proc.returncode})"
                break
            out.write(chunk)
            buf = (buf + chunk)[-1 << 16:]
            now = time.monotonic() - start
            for name, rx in MILESTONES:
                if name not in seen and rx.search(buf):
                    seen[name] = now
            if END.search(buf):
                ended = "guest ended (" + END.search(buf).group(0).decode() + ")"
                break
    proc.kill()
    proc.wait()
    return seen, ended


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--memory", type=int, default=256)
    ap.add_argument("--logs", type=Path, default=Path("/tmp"))
    args = ap.parse_args()
    from kvmkit.guest.assets import fast_guest
    from kvmkit.vmm import hostcompat
    g = fast_guest(build=True)
    compat = hostcompat.resolve("auto")
    cmdline = " ".join([g.cmdline, *compat.cmdline_extra])
    kvmkit_cmd = [sys.executable, "-m", "kvmkit.cli.main", "run", "--kernel", str(g.vmlinux),
                  "--initrd", str(g.initrd), "--cmdline", g.cmdline, "-m", f"{args.memory}M",
                  "--cpus", str(args.cpus), "--serial", "stdio"]
    results = {"kvmkit": watch(kvmkit_cmd, args.timeout, args.logs / "bench-boot-kvmkit.log")}
    qemu = shutil.which("qemu-system-x86_64")
    if qemu:
        kernel = g.vmlinux if has_pvh_note(g.vmlinux) else g.bzimage
        # The same CPUID workaround kvmkit applies (CX16 hidden); -cpu host/max
        # cannot start here (MSR 0x10a).
        cpu = "qemu64,-cx16" if compat.enabled else "host"
        qemu_cmd = [qemu, "-M", "microvm,x-option-roms=off,rtc=off,isa-serial=on", "-enable-kvm",
                    "-cpu", cpu,
                    "-m", str(args.memory), "-smp", str(args.cpus), "-nodefaults", "-no-user-config",
                    "-display", "none", "-serial", "stdio", "-kernel", str(kernel),
                    "-initrd", str(g.initrd), "-append", cmdline]
        results[f"QEMU ({kernel.name})"] = watch(qemu_cmd, args.timeout, args.logs / "bench-boot-qemu.log")
    names = list(results)
    print(f"boot milestones, seconds from process start ({args.cpus} vCPU, {args.memory} MiB, "
          f"host-compat {'on' if compat.enabled else 'off'}):")
    print(f"  {'milestone':22s}" + "".join(f"{n:>22s}" for n in names) + "      ratio")
    for name, _ in MILESTONES:
        row = [results[n][0].get(name) for n in names]
        cells = "".join(f"{v:22.1f}" if v is not None else f"{'not reached':>22s}" for v in row)
        ratio = f"{row[0] / row[1]:9.2f}" if len(row) > 1 and row[0] and row[1] else f"{'-':>9s}"
        print(f"  {name:22s}{cells}  {ratio}")
    for n in names:
        print(f"  {n}: {results[n][1]}")
    qlog = args.logs / "bench-boot-qemu.log"
    if len(names) > 1 and qlog.exists() and b"emulation failure" in qlog.read_bytes():
        code = re.search(rb"Code=.*", qlog.read_bytes())
        print(f"  QEMU stopped on a KVM emulation failure: {code.group(0).decode()[:120] if code else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
