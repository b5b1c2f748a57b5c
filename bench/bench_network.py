"""Guest-to-guest TCP over a kvmkit network's bridge, against host loopback.

Two fast guests on a NAT network (bridge, nftables, dnsmasq, all inside a
network namespace this benchmark creates and removes); guest B runs
``nc -l -p PORT | wc -c``, guest A ``dd if=/dev/zero bs=64k count=N | nc B
PORT``, timed in guest A by busybox's ``time``.  The reference is the very
same busybox (taken from the guest's initramfs) doing the same ``dd | nc``
over the host's loopback in the same namespace: the limit of a transfer with
these tools on this machine.  Prints MB/s of both and the ratio.

    python bench/bench_network.py [--mib 2] [--runs 2]

In-guest work is slow on emulating hosts (every syscall and interrupt is an
exit), so the default size is modest.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "manager"))

from helpers_net import network_domain_xml  # noqa: E402
from netlab import NetLab, setns_path  # noqa: E402
from sockconsole import PROMPT, SocketConsole  # noqa: E402

NET = """<network><name>bench</name><forward mode='nat'/><bridge name='kbench0'/>
<ip address='192.168.88.1' netmask='255.255.255.0'><dhcp>
<host mac='52:54:00:88:00:0a' ip='192.168.88.10'/><host mac='52:54:00:88:00:0b' ip='192.168.88.11'/>
</dhcp></ip></network>"""
GUESTS = {"a": ("52:54:00:88:00:0a", "192.168.88.10"), "b": ("52:54:00:88:00:0b", "192.168.88.11")}
HOOK = ("printf '#!/bin/sh\\n[ \"$1\" = bound ] && ip addr add $ip/$mask dev $interface\\nexit 0\\n' "
        "> /tmp/dhcp.sh; chmod +x /tmp/dhcp.sh")


def busybox_from_initrd(initrd: Path, out: Path) -> Path:
    """Pull bin/busybox out of the (uncompressed newc) initramfs."""
    data = initrd.read_bytes()
    pos = 0
    while pos < len(data) and data[pos:pos + 6] == b"070701":
        f = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        size, namesize = f[6], f[11]
        name_end = pos + 110 + namesize
        name = data[pos + 110: name_end - 1].decode()
        body = (name_end + 3) & ~3
        if name == "bin/busybox":
            out.write_bytes(data[body: body + size])
            out.chmod(0o755)
            return out
        pos = (body + size + 3) & ~3
    raise SystemExit(f"no bin/busybox in {initrd}")


def transfer_cmd(count: int, peer: str, port: int, bb: str = "") -> str:
    return f"{bb}dd if=/dev/zero bs=64k count={count} 2>/dev/null | {bb}nc {peer} {port}"


def host_loopback(lab: NetLab, busybox: Path, count: int, port: int) -> float:
    """Seconds for the same dd | nc over loopback (in the lab namespace)."""
    bb = f"{busybox} "
    # the listener's stdin stays open (a pipe): busybox nc ends at EOF on stdin
    recv = subprocess.Popen(["sh", "-c", f"{bb}nc -l -p {port} | {bb}wc -c"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            preexec_fn=lambda: setns_path(lab.path()))
    time.sleep(0.3)
    t0 = time.perf_counter()
    res = lab.run(["sh", "-c", transfer_cmd(count, "127.0.0.1", port, bb)])
    elapsed = time.perf_counter() - t0
    got = int(recv.stdout.read().strip())
    recv.stdin.close()
    recv.wait(60)
    assert res.returncode == 0 and got == count * 65536, (res.stderr, got)
    return elapsed


def guest_seconds(out: str) -> float:
    m = re.search(r"real\s+(?:(\d+)m\s*)?([\d.]+)s", out)
    if not m:
        raise SystemExit(f"no timing in guest output: {out!r}")
    return int(m.group(1) or 0) * 60 + float(m.group(2))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, default=2, help="MiB per transfer (default 2)")
    ap.add_argument("--runs", type=int, default=2, help="transfers of each kind; the best is reported")
    args = ap.parse_args()
    count = args.mib * 16
    from kvmkit.guest.assets import fast_guest
    from kvmkit.manager import Host
    g = fast_guest(build=True)
    tmp = Path(tempfile.mkdtemp(prefix="kvmkit-bench-net-"))
    busybox = busybox_from_initrd(g.initrd, tmp / "busybox")
    lab = NetLab("bench")
    try:
        host_best = min(host_loopback(lab, busybox, count, 6000 + i) for i in range(args.runs))
        with lab.entered():
            host = Host(tmp / "state")
            host.networks.define(NET)
            host.networks.start("bench")
            try:
                cons = {}
                for name, (mac, _) in GUESTS.items():
                    host.define(network_domain_xml(name, g.vmlinux, "bench", initrd=g.initrd, cmdline=g.cmdline,
                                                   memory_mib=128, serial=str(tmp / f"{name}.sock"), mac=mac))
                    host.start(name)
                for name in GUESTS:
                    cons[name] = SocketConsole(str(tmp / f"{name}.sock"))
                    cons[name].expect(PROMPT, 600)
                for name, c in cons.items():
                    c.shell(HOOK)
                    status, out = c.shell("ip link set eth0 up; udhcpc -i eth0 -s /tmp/dhcp.sh -q -n -t 30 -T 2 2>&1",
                                          timeout=300)
                    assert status == 0 and f"lease of {GUESTS[name][1]}" in out, out
                guest_times = []
                for i in range(args.runs):
                    port = 5001 + i
                    got: dict = {}
                    listener = threading.Thread(target=lambda: got.update(
                        r=cons["b"].shell(f"nc -l -p {port} | wc -c", timeout=600)))
                    listener.start()
                    time.sleep(2.0)              # the guest's nc is listening (each exec is slow here)
                    status, out = cons["a"].shell(f"time sh -c '{transfer_cmd(count, GUESTS['b'][1], port)}' 2>&1",
                                                  timeout=600)
                    listener.join(600)
                    received = int(got["r"][1].strip().splitlines()[-1])
                    assert status == 0 and received == count * 65536, (out, got)
                    guest_times.append(guest_seconds(out))
            finally:
                for name in GUESTS:
                    if name in host.store.names() and host.lookup(name).active:
                        host.destroy(name)
                host.networks.destroy("bench")
    finally:
        lab.close()
    mb = count * 65536 / 1e6
    guest_rate, host_rate = mb / min(guest_times), mb / host_best
    print(f"guest-to-guest TCP over the bridge ({args.mib} MiB, busybox dd | nc, best of {args.runs}): "
          f"{guest_rate:.3f} MB/s (runs: {', '.join(f'{t:.2f}s' for t in guest_times)})")
    print(f"host loopback, same busybox dd | nc: {host_rate:.0f} MB/s")
    print(f"ratio guest/loopback: {guest_rate / host_rate:.4f}")


if __name__ == "__main__":
    main()
