"""End to end: the project's fast Linux guest finds and uses the virtio devices.

On emulating hosts (HOST-NOTES, "the hard wall") guest user space cannot
run, so the ``slow`` tests check what the guest *kernel* does by itself:
virtio-blk probe and partition scan, an ext4 root mount that writes the
superblock (and a read-only disk that refuses it), ``ip=`` answering pings
and TCP RSTs through a tap in a test namespace, hwrng reading virtio-rng,
the balloon driver following the target and answering stats.  The
``userspace`` tests do the user-space versions and are skipped here.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import socket
import struct
import subprocess
import time

import pytest

from kvmkit.devices.virtio.config import (
    BalloonSpec, ConsoleSpec, DiskSpec, NetSpec, VirtioSpecs, VsockSpec)

from .helpers import entered_netns, in_netns, sh

BOOT_TIMEOUT = float(os.environ.get("KVMKIT_BOOT_TIMEOUT", "900"))
MB = 1 << 20


@pytest.fixture(scope="module")
def assets():
    from kvmkit.errors import ConfigError
    from kvmkit.guest.assets import fast_guest
    try:
        return fast_guest(build=False, progress=False)
    except ConfigError as exc:
        pytest.skip(f"fast guest not built: {exc}")


@pytest.fixture(scope="module")
def emulating():
    from kvmkit.vmm.hostcompat import probe
    return probe()


@pytest.fixture
def userspace(emulating):
    is_emulating, why = emulating
    if is_emulating:
        pytest.skip(f"guest user space cannot run on this host ({why}; HOST-NOTES 'hard wall')")


def boot(assets, specs: VirtioSpecs, cmdline: str = "", initrd: bool = True, memory: str = "256M"):
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine
    cfg = VmConfig.build(assets.vmlinux, initrd=assets.initrd if initrd else None, memory=memory,
                         cmdline=f"{assets.cmdline} {cmdline}".strip(), virtio=specs)
    return Machine(cfg).start()


def mbr_image(path, size: int) -> None:
    """A disk with two primary partitions, written by hand (no tools needed)."""
    with open(path, "wb") as f:
        f.truncate(size)
        entries = b"".join(struct.pack("<B3sB3sII", 0, b"\0\0\0", 0x83, b"\0\0\0", start, count)
                           for start, count in ((2048, 8192), (10240, 8192)))
        f.seek(446)
        f.write(entries + bytes(32) + b"\x55\xaa")


def ext4_image(path, size: int) -> None:
    with open(path, "wb") as f:
        f.truncate(size)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(path)], check=True)


def ext4_mount_count(path) -> int:
    with open(path, "rb") as f:
        f.seek(1024 + 0x34)
        return struct.unpack("<H", f.read(2))[0]


def device(m, kind):
    return next(d for d in m.virtio_devices if d.kind == kind)


@pytest.mark.slow
def test_blk_net_rng_balloon_console(assets, tmp_path, netns):
    disk = tmp_path / "parts.raw"
    mbr_image(disk, 64 * MB)
    sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
    specs = VirtioSpecs(disks=(DiskSpec(str(disk)),), nets=(NetSpec("kvg0"),),
                        console=ConsoleSpec(str(tmp_path / "hvc0.log")), rng=True,
                        balloon=BalloonSpec(), vsock=VsockSpec(3, str(tmp_path / "v.sock")))
    # No initramfs and rootdelay: the kernel waits (with every driver up)
    # instead of starting init, which on emulating hosts would die at once
    # and reboot the VM before the host-side checks are done.
    cmdline = "console=hvc0 ip=10.77.2.2::10.77.2.1:255.255.255.0::eth0:off rootdelay=1200"
    with entered_netns(netns):            # the tap must be created inside the namespace
        m = boot(assets, specs, cmdline, initrd=False)
    try:
        m.console.expect(r"\[vda\] 131072 512-byte logical blocks", timeout=BOOT_TIMEOUT)
        m.console.expect(r"vda: vda1 vda2", timeout=BOOT_TIMEOUT)
        m.console.expect(r"IP-Config: Complete", timeout=BOOT_TIMEOUT)
        sh("ip", "netns", "exec", netns, "ip", "addr", "add", "10.77.2.1/24", "dev", "kvg0")
        sh("ip", "netns", "exec", netns, "ip", "link", "set", "kvg0", "up")
        out = subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "3", "-w", "90", "10.77.2.2"],
                             capture_output=True, text=True)
        assert " 0% packet loss" in out.stdout or "3 received" in out.stdout, out.stdout
        refused = in_netns(netns, lambda: _tcp_refused("10.77.2.2", 80))
        assert refused, "the guest kernel should answer a SYN to a closed port with RST"
        assert device(m, "virtio-rng").query()["bytes-served"] > 0
        balloon = device(m, "virtio-balloon")
        balloon.set_target(16 * MB)
        _wait(lambda: balloon.actual() == 16 * MB, BOOT_TIMEOUT / 3)
        balloon.set_target(0)
        _wait(lambda: balloon.actual() == 0, BOOT_TIMEOUT / 3)
        assert "total-memory" in balloon.stats(timeout=30)
        # hvc0 is a kernel console too: what the kernel printed after it registered is there
        assert b"before mounting root device" in (tmp_path / "hvc0.log").read_bytes()
    finally:
        m.quit()
        m.close()


def _tcp_refused(host: str, port: int) -> bool:
    s = socket.socket()
    s.settimeout(30)
    try:
        s.connect((host, port))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        s.close()
    return False


def _wait(cond, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


@pytest.mark.slow
@pytest.mark.parametrize("readonly", [False, True])
def test_ext4_root_mount(assets, tmp_path, readonly):
    img = tmp_path / "root.ext4"
    ext4_image(img, 32 * MB)
    before = ext4_mount_count(img)
    specs = VirtioSpecs(disks=(DiskSpec(str(img), "raw", readonly=readonly),))
    m = boot(assets, specs, "root=/dev/vda rw rootfstype=ext4", initrd=False)
    try:
        if readonly:
            m.console.expect(r"Mounted root \(ext4 filesystem\) readonly", timeout=BOOT_TIMEOUT)
        else:
            m.console.expect(r"EXT4-fs \(vda\): mounted filesystem", timeout=BOOT_TIMEOUT)
            m.console.expect(r"Mounted root \(ext4 filesystem\) on device", timeout=BOOT_TIMEOUT)
    finally:
        m.quit()
        m.close()
    after = ext4_mount_count(img)
    assert after == before if readonly else after == before + 1


# --- user space: runs where the guest can run it ---------------------------

def run_in_guest(assets, specs, script: str, timeout: float = BOOT_TIMEOUT, **kw):
    cmd = "kvmkit.run=b64:" + base64.b64encode(script.encode()).decode()
    m = boot(assets, specs, cmd, **kw)
    try:
        m.console.expect(r"kvmkit-guest: run exit=0", timeout=timeout)
        return m.console.output
    finally:
        m.quit()
        m.close()


@pytest.mark.slow
@pytest.mark.userspace
def test_mkfs_mount_write_sha256(assets, tmp_path, userspace):
    img = tmp_path / "data.raw"
    with open(img, "wb") as f:
        f.truncate(128 * MB)
    out = run_in_guest(assets, VirtioSpecs(disks=(DiskSpec(str(img)),)),
                       "mkfs.ext4 -q /dev/vda && mount /dev/vda /mnt && "
                       "dd if=/dev/urandom of=/mnt/f bs=1M count=32 && sync && "
                       "sha256sum /mnt/f && umount /mnt")
    digest = re.search(rb"([0-9a-f]{64})\s+/mnt/f", out).group(1).decode()
    dump = subprocess.run(["debugfs", "-R", "cat /f", str(img)], capture_output=True, check=True).stdout
    assert hashlib.sha256(dump).hexdigest() == digest


@pytest.mark.slow
@pytest.mark.userspace
def test_tcp_transfer(assets, tmp_path, netns, userspace):
    payload = os.urandom(8 * MB)
    sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
    specs = VirtioSpecs(nets=(NetSpec("kvg1"),))

    def serve() -> bytes:
        srv = socket.socket()
        srv.bind(("10.77.3.1", 5001))
        srv.listen(1)
        srv.settimeout(BOOT_TIMEOUT)
        c, _ = srv.accept()
        c.sendall(payload)
        c.close()
        return b""

    script = ("ip addr add 10.77.3.2/24 dev eth0 && ip link set eth0 up && "
              "nc 10.77.3.1 5001 | sha256sum")
    with entered_netns(netns):
        m = boot(assets, specs, "kvmkit.run=b64:" + base64.b64encode(script.encode()).decode())
    try:
        sh("ip", "netns", "exec", netns, "ip", "addr", "add", "10.77.3.1/24", "dev", "kvg1")
        sh("ip", "netns", "exec", netns, "ip", "link", "set", "kvg1", "up")
        in_netns(netns, serve)
        m.console.expect(hashlib.sha256(payload).hexdigest(), timeout=BOOT_TIMEOUT)
    finally:
        m.quit()
        m.close()


@pytest.mark.slow
@pytest.mark.userspace
def test_vsock_echo(assets, tmp_path, userspace):
    uds = str(tmp_path / "v.sock")
    specs = VirtioSpecs(vsock=VsockSpec(7, uds))
    m = boot(assets, specs, "kvmkit.run=b64:" + base64.b64encode(
        b"socat VSOCK-LISTEN:5000,fork EXEC:cat").decode())
    try:
        m.console.expect(r"kvmkit-guest: init started", timeout=BOOT_TIMEOUT)
        deadline = time.monotonic() + 60
        while True:
            s = socket.socket(socket.AF_UNIX)
            s.connect(uds)
            s.sendall(b"CONNECT 5000\n")
            line = s.recv(64)
            if line.startswith(b"OK "):
                break
            s.close()
            assert time.monotonic() < deadline
            time.sleep(1)
        s.sendall(b"echo me")
        assert s.recv(64) == b"echo me"
    finally:
        m.quit()
        m.close()
