"""Guest user space on this host: time to the shell prompt, syscall cost,
snapshot/restore, and in-guest virtio-blk reads against the host's own.

- prompt: seconds from building the machine to ``root@kvmkit:~# `` on the
  serial console, fast guest, 1 and 2 vCPUs (target here <= 30 s);
- syscalls: ``kvmkit-probe getppid N`` in the guest; syscalls per second
  and VM exits per syscall, beside the floor of one exit measured by
  ``bench_exits.py`` (a C KVM_RUN loop) in the same run;
- restore: ``Machine.restore`` of a snapshot taken at the prompt, to the
  next prompt (the reason snapshots exist: no boot);
- dd: ``dd if=/dev/vda of=/dev/null bs=1M`` in the guest against ``dd`` of
  the same image file on the host (the physical limit);
- tcp: busybox ``nc`` in the guest sending to a listener in a network
  namespace over the guest's tap, against the same transfer over the host's
  loopback (the limit a tap cannot beat).

    python bench/bench_userspace.py [--syscalls 20000] [--mib 64] [--tcp-mib 8]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
PROMPT = rb"root@kvmkit:~# "
CLONE_NEWNET = 0x40000000
HOST_IP, GUEST_IP = "10.77.9.1", "10.77.9.2"


@contextlib.contextmanager
def netns_entered(name: str):
    """This thread inside namespace ``name`` (setns is per thread), so a tap
    the VMM opens now is created there."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    there = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        libc.setns(home, CLONE_NEWNET)
        os.close(home)
        os.close(there)


def receive_rate(bind: tuple[str, int], ready: threading.Event, out: dict, netns: str | None = None) -> None:
    """Accept one connection and time it from accept to EOF (bytes/s in ``out``)."""
    with netns_entered(netns) if netns else contextlib.nullcontext():
        srv = socket.create_server(bind)
    srv.settimeout(600)
    ready.set()
    c, _ = srv.accept()
    t0, n = time.monotonic(), 0
    while chunk := c.recv(1 << 16):
        n += len(chunk)
    out["rate"], out["bytes"] = n / (time.monotonic() - t0), n
    c.close()
    srv.close()


def loopback_rate(nbytes: int) -> float:
    """The same transfer over the host's loopback: the limit for the tap."""
    out: dict = {}
    ready = threading.Event()
    srv = threading.Thread(target=receive_rate, args=(("127.0.0.1", 5101), ready, out))
    srv.start()
    ready.wait(30)
    block = bytes(1 << 16)
    with socket.create_connection(("127.0.0.1", 5101)) as s:
        for _ in range(nbytes >> 16):
            s.sendall(block)
    srv.join(60)
    return out["rate"]


def tcp_rate(m, netns: str, mib: int) -> float:
    out: dict = {}
    ready = threading.Event()
    srv = threading.Thread(target=receive_rate, args=((HOST_IP, 5100), ready, out, netns))
    srv.start()
    ready.wait(30)
    shell(m, f"dd if=/dev/zero bs=64k count={mib * 16} 2>/dev/null | nc {HOST_IP} 5100", timeout=1800)
    srv.join(60)
    if out.get("bytes") != mib << 20:
        raise SystemExit(f"tcp: {out.get('bytes')} of {mib << 20} bytes arrived")
    return out["rate"]


def boot(cpus: int, log: Path, virtio=None):
    from kvmkit.guest.assets import fast_guest
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine
    g = fast_guest(build=True)
    t0 = time.monotonic()
    m = Machine(VmConfig.build(g.vmlinux, initrd=g.initrd, cmdline=g.cmdline, memory=g.memory, cpus=cpus,
                               serial=f"file:{log}", virtio=virtio))
    m.start()
    m.console.expect(PROMPT, timeout=900, alive=lambda: m.running)
    return m, time.monotonic() - t0


def shell(m, cmd: str, timeout: float = 600) -> str:
    rc, out = m.console.shell(cmd, timeout, alive=lambda: m.running)
    if rc != 0:
        raise SystemExit(f"guest: {cmd!r} exited {rc}: {out}")
    return out.strip()


def exit_floor() -> float:
    """Exits per second of the C KVM_RUN loop (bench_exits.py's floor)."""
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_exits.py"), "--rounds", "1"],
                         capture_output=True, text=True, timeout=600).stdout
    m = re.search(r"C floor \(KVM_RUN loop in C\):\s*([\d.]+) exits/s", out)
    return float(m.group(1)) if m else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--syscalls", type=int, default=20000)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--tcp-mib", type=int, default=8)
    a = ap.parse_args()
    netns = f"kvmkit-bench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        run(a, netns)
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)


def run(a: argparse.Namespace, netns: str) -> None:
    from kvmkit.devices.virtio.config import DiskSpec, NetSpec, VirtioSpecs
    from kvmkit.vmm.machine import Machine

    def ns(*cmd: str) -> None:
        subprocess.run(["ip", "netns", "exec", netns, *cmd], check=True)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        disk = tmp / "disk.raw"
        with open(disk, "wb") as f:
            f.write(os.urandom(a.mib << 20))
        for cpus in (1, 2):
            with netns_entered(netns):
                m, t = boot(cpus, tmp / f"c{cpus}.log",
                            VirtioSpecs(disks=(DiskSpec(str(disk), "raw"),), nets=(NetSpec("kvb0"),))
                            if cpus == 1 else None)
            print(f"prompt, {cpus} vCPU: {t:.1f} s (target <= 30 s)", flush=True)
            if cpus == 1:
                s0 = m.query_stats()
                t0 = time.monotonic()
                shell(m, f"kvmkit-probe getppid {a.syscalls}")
                dt = time.monotonic() - t0
                s1 = m.query_stats()
                exits = s1["exits"]["total"] - s0["exits"]["total"]
                rate = a.syscalls / dt
                floor = exit_floor()
                print(f"syscalls: {rate:,.0f}/s ({1e6 / rate:.0f} µs each), {exits / a.syscalls:.2f} exits "
                      f"per syscall; one-exit floor (C KVM_RUN loop) {floor:,.0f}/s: "
                      f"ratio {rate / floor:.3f}", flush=True)
                os.system("sync; echo 3 > /proc/sys/vm/drop_caches")
                t0 = time.monotonic()
                subprocess.run(["dd", f"if={disk}", "of=/dev/null", "bs=1M"], capture_output=True, check=True)
                host = (a.mib << 20) / (time.monotonic() - t0)
                t0 = time.monotonic()
                shell(m, "dd if=/dev/vda of=/dev/null bs=1M 2>/dev/null")
                guest = (a.mib << 20) / (time.monotonic() - t0)
                print(f"dd {a.mib} MiB: guest {guest / 1e6:.1f} MB/s, host {host / 1e6:.1f} MB/s: "
                      f"ratio {guest / host:.3f}", flush=True)
                ns("ip", "addr", "add", f"{HOST_IP}/24", "dev", "kvb0")
                ns("ip", "link", "set", "kvb0", "up")
                shell(m, f"ip addr add {GUEST_IP}/24 dev eth0 && ip link set eth0 up")
                guest_tcp = tcp_rate(m, netns, a.tcp_mib)
                host_tcp = loopback_rate(a.tcp_mib << 20)
                print(f"tcp {a.tcp_mib} MiB guest -> namespace over tap: {guest_tcp / 1e6:.2f} MB/s, host loopback "
                      f"{host_tcp / 1e6:.0f} MB/s: ratio {guest_tcp / host_tcp:.4f}", flush=True)
                t0 = time.monotonic()
                info = m.save_snapshot(tmp / "snap")
                print(f"snapshot at the prompt: {info.seconds * 1000:.0f} ms "
                      f"({info.written_bytes >> 20} of {info.memory_bytes >> 20} MiB written)", flush=True)
            m.close()
        t0 = time.monotonic()
        with netns_entered(netns):          # its tap is made again, in the namespace
            r = Machine.restore(tmp / "snap")
        r.start()
        shell(r, "true")
        print(f"restore to a working shell: {(time.monotonic() - t0) * 1000:.0f} ms "
              f"(boot to prompt above: the ratio is the point)", flush=True)
        r.close()


if __name__ == "__main__":
    main()
