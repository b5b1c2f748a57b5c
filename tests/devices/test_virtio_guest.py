"""End to end: the fast Linux guest uses every virtio device from its own
user space, over one boot (tens of seconds on emulating hosts):

- virtio-blk: the partition scan of an MBR disk; a pattern written on the
  host read back in the guest, and one written in the guest read back on
  the host, raw and qcow2 (checksums on both sides); a readonly disk that
  refuses writes; ext4 made on the host, mounted and written in the guest,
  the file read back on the host with debugfs after poweroff;
- virtio-net over a tap in a test network namespace: ping both ways and TCP
  with busybox nc in both directions;
- virtio-console: a shell on hvc0;
- virtio-vsock: a connection in each direction (Firecracker's convention);
- virtio-balloon: inflate and deflate seen in the guest's /proc/meminfo;
- virtio-rng: /dev/hwrng reads what the device served;
- and last, QMP system_powerdown: acpid in the guest powers it off (exit 0).
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
import subprocess
import threading
import time

import pytest

from kvmkit.devices.virtio.config import (
    BalloonSpec, ConsoleSpec, DiskSpec, NetSpec, VirtioSpecs, VsockSpec)
from kvmkit.vmm.api import ExitReason

from .helpers import entered_netns, in_netns, sh

pytestmark = [pytest.mark.slow, pytest.mark.kvm]

BOOT_TIMEOUT = float(os.environ.get("KVMKIT_BOOT_TIMEOUT", "900"))
MB = 1 << 20
PROMPT = rb"root@kvmkit:~# "
HOST_IP, GUEST_IP = "10.77.4.1", "10.77.4.2"
PATTERN = bytes(range(256)) * (MB // 256)          # 1 MiB, recognisable
P2_START = 10240 * 512                              # the MBR disk's second partition


def mbr_image(path, size: int) -> None:
    """A disk with two primary partitions, written by hand (no tools needed),
    and 4 MiB of PATTERN at the start of the second."""
    with open(path, "wb") as f:
        f.truncate(size)
        entries = b"".join(struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", start, count)
                           for start, count in ((2048, 8192), (10240, 16384)))
        f.seek(446)
        f.write(entries + bytes(32) + b"\x55\xaa")
        f.seek(P2_START)
        f.write(PATTERN * 4)


class Guest:
    """The booted guest and the host ends of its devices."""

    def __init__(self, m, tmp, netns: str) -> None:
        self.m, self.tmp, self.netns = m, tmp, netns

    def sh(self, command: str, timeout: float = 300) -> str:
        rc, out = self.m.console.shell(command, timeout, alive=lambda: self.m.running)
        assert rc == 0, f"{command!r} exited {rc}: {out}"
        return out.strip()

    def rc(self, command: str, timeout: float = 300) -> tuple[int, str]:
        return self.m.console.shell(command, timeout, alive=lambda: self.m.running)

    def device(self, kind: str, index: int = 0):
        return [d for d in self.m.virtio_devices if d.kind == kind][index]


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    from kvmkit.guest.assets import fast_guest
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine
    g = fast_guest(build=True, progress=False)
    tmp = tmp_path_factory.mktemp("virtio")
    mbr_image(tmp / "parts.raw", 64 * MB)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp / "data.qcow2"), "64M"], check=True)
    with open(tmp / "ro.raw", "wb") as f:
        f.write(PATTERN)
        f.truncate(16 * MB)
    with open(tmp / "fs.ext4", "wb") as f:
        f.truncate(32 * MB)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(tmp / "fs.ext4")], check=True)
    netns = f"kvmkit-v{os.getpid()}"
    sh("ip", "netns", "add", netns)
    sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
    specs = VirtioSpecs(
        disks=(DiskSpec(str(tmp / "parts.raw"), "raw"), DiskSpec(str(tmp / "data.qcow2"), "qcow2"),
               DiskSpec(str(tmp / "ro.raw"), "raw", readonly=True), DiskSpec(str(tmp / "fs.ext4"), "raw")),
        nets=(NetSpec("kvv0"),), console=ConsoleSpec(str(tmp / "hvc0.out")), rng=True,
        balloon=BalloonSpec(deflate_on_oom=False), vsock=VsockSpec(5, str(tmp / "v.sock")))
    log = tmp / "console.log"
    print(f"virtio guest console: {log}")
    try:
        with entered_netns(netns):          # the tap is created inside the namespace
            m = Machine(VmConfig.build(g.vmlinux, initrd=g.initrd, cmdline=g.cmdline, memory=g.memory,
                                       serial=f"file:{log}", virtio=specs))
        m.start()
        try:
            m.console.expect(PROMPT, timeout=BOOT_TIMEOUT, alive=lambda: m.running)
            sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"{HOST_IP}/24", "dev", "kvv0")
            sh("ip", "netns", "exec", netns, "ip", "link", "set", "kvv0", "up")
            yield Guest(m, tmp, netns)
        finally:
            m.close()
    finally:
        sh("ip", "netns", "del", netns)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- block ------------------------------------------------------------------------

def test_partition_scan_of_an_mbr_disk(guest):
    parts = guest.sh("cat /proc/partitions")
    assert re.search(r"\bvda1\b", parts) and re.search(r"\bvda2\b", parts), parts
    assert guest.sh("cat /sys/block/vda/size") == str(64 * MB // 512)


def test_host_pattern_reads_back_in_the_guest(guest):
    out = guest.sh("dd if=/dev/vda2 bs=1M count=4 2>/dev/null | sha256sum")
    assert out.split()[0] == sha256(PATTERN * 4)


@pytest.mark.parametrize("dev,image,fmt", [("vda", "parts.raw", "raw"), ("vdb", "data.qcow2", "qcow2")])
def test_guest_writes_reach_the_image(guest, dev, image, fmt):
    seek = 40 if dev == "vda" else 3             # MiB; on vda past the partitions
    out = guest.sh(f"dd if=/dev/urandom of=/tmp/w bs=1M count=2 2>/dev/null && sha256sum /tmp/w && "
                   f"dd if=/tmp/w of=/dev/{dev} bs=1M seek={seek} conv=fsync 2>/dev/null")
    digest = out.split()[0]
    raw = guest.tmp / f"{dev}.dump"
    subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(guest.tmp / image), str(raw)],
                   check=True)
    with open(raw, "rb") as f:
        f.seek(seek * MB)
        assert sha256(f.read(2 * MB)) == digest
    raw.unlink()
    if fmt == "qcow2":
        check = subprocess.run(["qemu-img", "check", "-U", str(guest.tmp / image)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr


def test_readonly_disk_reads_and_refuses_writes(guest):
    assert guest.sh("dd if=/dev/vdc bs=1M count=1 2>/dev/null | sha256sum").split()[0] == sha256(PATTERN)
    assert guest.sh("cat /sys/block/vdc/ro") == "1"
    rc, out = guest.rc("dd if=/dev/zero of=/dev/vdc bs=4k count=1 conv=fsync")
    assert rc != 0, out
    with open(guest.tmp / "ro.raw", "rb") as f:
        assert f.read(MB) == PATTERN


def test_ext4_mount_and_write(guest):
    guest.sh("mount -t ext4 /dev/vdd /mnt && echo 'written by the guest' > /mnt/hello.txt && "
             "sha256sum /bin/busybox > /mnt/sum && umount /mnt")
    # read back on the host at the end (test_powerdown_through_acpid): the
    # disk is in use until then


# --- network ------------------------------------------------------------------

def test_ping_both_ways(guest):
    guest.sh(f"ip addr add {GUEST_IP}/24 dev eth0 && ip link set eth0 up")
    out = guest.sh(f"ping -c 3 -W 10 {HOST_IP}", timeout=120)
    assert "3 packets received" in out, out
    p = subprocess.run(["ip", "netns", "exec", guest.netns, "ping", "-c", "3", "-w", "60", GUEST_IP],
                       capture_output=True, text=True)
    assert " 0% packet loss" in p.stdout, p.stdout


def test_tcp_guest_to_host_and_back(guest):
    payload = os.urandom(2 * MB)
    got: dict[str, bytes] = {}

    def serve() -> None:
        srv = socket.socket()
        srv.bind((HOST_IP, 5001))
        srv.listen(1)
        srv.settimeout(300)
        c, _ = srv.accept()
        buf = bytearray()
        while chunk := c.recv(65536):
            buf += chunk
        got["up"] = bytes(buf)
        c.close()
        srv.close()

    t = threading.Thread(target=in_netns, args=(guest.netns, serve))
    t.start()
    time.sleep(0.5)
    sent = guest.sh("dd if=/dev/urandom of=/tmp/up bs=1M count=2 2>/dev/null && sha256sum /tmp/up && "
                    f"nc {HOST_IP} 5001 < /tmp/up", timeout=600)
    t.join(60)
    assert sha256(got["up"]) == sent.split()[0]
    # host -> guest: the guest listens, the host sends
    guest.m.console.send("nc -l -p 5002 > /tmp/down; sha256sum /tmp/down\n")
    time.sleep(3)

    def send() -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                s = socket.create_connection((GUEST_IP, 5002), timeout=30)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(1)
        s.sendall(payload)
        s.close()
    in_netns(guest.netns, send)
    guest.m.console.expect(sha256(payload).encode(), timeout=300)
    guest.m.console.expect(PROMPT, timeout=60)


# --- console, vsock, balloon, rng ------------------------------------------------

def test_shell_on_hvc0(guest):
    guest.sh("setsid sh -c 'exec sh -i </dev/hvc0 >/dev/hvc0 2>&1' &")
    out = guest.tmp / "hvc0.out"
    hvc = guest.device("virtio-console")
    deadline = time.monotonic() + 120
    while b"hvc0 says 42" not in out.read_bytes():
        assert time.monotonic() < deadline, out.read_bytes()[-500:]
        hvc.feed(b"echo hvc0 says $((6*7)); tty\n")
        time.sleep(3)
    assert b"/dev/hvc0" in out.read_bytes()


def test_vsock_host_to_guest(guest):
    guest.m.console.send("kvmkit-probe vsock-echo 5000\n")
    guest.m.console.expect(rb"listening", timeout=60)
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(60)
    s.connect(str(guest.tmp / "v.sock"))
    s.sendall(b"CONNECT 5000\n")
    assert s.recv(64).startswith(b"OK ")
    s.sendall(b"echo me")
    got = b""
    while len(got) < 7:
        got += s.recv(64)
    assert got == b"echo me"
    s.close()
    guest.m.console.expect(PROMPT, timeout=60)


def test_vsock_guest_to_host(guest):
    path = str(guest.tmp / "v.sock") + "_6000"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    srv.settimeout(120)
    got: dict[str, bytes] = {}

    def serve() -> None:
        c, _ = srv.accept()
        buf = b""
        while chunk := c.recv(4096):
            buf += chunk
        got["msg"] = buf
        c.sendall(b"host heard " + buf)
        c.close()
    t = threading.Thread(target=serve)
    t.start()
    out = guest.sh("echo -n from-guest | kvmkit-probe vsock-send 2 6000", timeout=120)
    t.join(30)
    srv.close()
    assert got["msg"] == b"from-guest"
    assert out == "host heard from-guest"


def _mem_total_kib(guest) -> int:
    return int(re.search(r"MemTotal:\s+(\d+) kB", guest.sh("cat /proc/meminfo")).group(1))


def test_balloon_inflate_and_deflate_seen_in_meminfo(guest):
    balloon = guest.device("virtio-balloon")
    before = _mem_total_kib(guest)
    guest.m.balloon(guest.m.memory.total_size - 32 * MB)       # take 32 MiB
    deadline = time.monotonic() + 300
    # The driver gives pages back in batches: wait for all 32 MiB to be
    # reported to the device as well as for the guest's own accounting.
    while _mem_total_kib(guest) > before - 30 * 1024 or balloon.actual() < 32 * MB:
        assert time.monotonic() < deadline, (before, _mem_total_kib(guest), balloon.actual())
        time.sleep(2)
    guest.m.balloon(guest.m.memory.total_size)                 # give it back
    deadline = time.monotonic() + 300
    while _mem_total_kib(guest) < before - 1024:
        assert time.monotonic() < deadline
        time.sleep(2)


def test_hwrng_reads_from_virtio_rng(guest):
    rng = guest.device("virtio-rng")
    assert guest.sh("cat /sys/class/misc/hw_random/rng_current").startswith("virtio_rng")
    served = rng.query()["bytes-served"]
    assert guest.sh("dd if=/dev/hwrng bs=64 count=4 2>/dev/null | wc -c") == "256"
    assert rng.query()["bytes-served"] >= served + 256


# --- last: the power button ------------------------------------------------------

def test_powerdown_through_acpid(guest):
    """QMP system_powerdown presses the ACPI power button; busybox acpid in
    the guest runs poweroff, and the VM ends with status 0.  Then the ext4
    file the guest wrote is read back on the host."""
    import asyncio

    from qemu.qmp import QMPClient

    from kvmkit.monitor.server import QmpServer
    path = f"/tmp/kvmkit-virtio-{os.getpid()}.qmp"
    with QmpServer(guest.m, f"unix:{path}"):
        async def press() -> None:
            c = QMPClient("powerdown")
            await c.connect(path)
            await c.execute("system_powerdown")
            await c.disconnect()
        asyncio.run(asyncio.wait_for(press(), 30))
        assert guest.m.wait(300) == ExitReason.POWEROFF, guest.m.console.text[-2000:]
    assert guest.m.exit_status == 0
    fs = str(guest.tmp / "fs.ext4")
    hello = subprocess.run(["debugfs", "-R", "cat /hello.txt", fs], capture_output=True, check=True).stdout
    assert hello == b"written by the guest\n"
    fsck = subprocess.run(["e2fsck", "-fn", fs], capture_output=True, text=True)
    assert fsck.returncode == 0, fsck.stdout
