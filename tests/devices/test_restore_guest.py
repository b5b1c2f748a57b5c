"""The fast guest with a virtio disk and NIC, booted once and saved at its
shell, then restored by ``kvmkit run --restore`` in a fresh process (in the
test's network namespace, so its tap is there): the shell answers, a block
the guest writes to /dev/vda is read back on the host from the image, and
the network configured before the save works after it (ping both ways to
the namespace over the tap)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time

import pytest

from kvmkit.devices.virtio.config import DiskSpec, NetSpec, VirtioSpecs

from .helpers import entered_netns, sh

pytestmark = [pytest.mark.slow, pytest.mark.userspace, pytest.mark.kvm]

PROMPT = rb"root@kvmkit:~# "
HOST_IP, GUEST_IP = "10.77.9.1", "10.77.9.2"
MARK = b"kvmkit-written-after-restore"
SECTOR = 2048


class SerialClient:
    """A shell on a ``--serial unix:PATH`` console."""

    def __init__(self, path: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                assert time.monotonic() < deadline, f"no console socket at {path}"
                time.sleep(0.05)
        self.buf = b""
        self.n = 0

    def shell(self, command: str, timeout: float = 120) -> tuple[int, str]:
        self.n += 1
        self.s.sendall(f'echo "__t""_{self.n}s"; {command}; echo "__t""_{self.n}e" $?\n'.encode())
        rx = re.compile(rb"__t_%ds\r?\n(.*?)__t_%de (\d+)\r?\n" % (self.n, self.n), re.S)
        deadline = time.monotonic() + timeout
        self.s.settimeout(1)
        while not (m := rx.search(self.buf)):
            assert time.monotonic() < deadline, f"{command!r}: no answer; {self.buf[-500:]!r}"
            try:
                chunk = self.s.recv(65536)
            except TimeoutError:
                continue
            assert chunk, f"console closed; {self.buf[-500:]!r}"
            self.buf += chunk
        self.buf = self.buf[m.end():]
        return int(m.group(2)), m.group(1).decode("utf-8", "replace").replace("\r\n", "\n")

    def close(self) -> None:
        self.s.close()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Boot with a qcow2 disk and a NIC whose address is set in the guest, save at the shell."""
    from kvmkit.guest.assets import fast_guest
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine
    g = fast_guest(build=True, progress=False)
    tmp = tmp_path_factory.mktemp("restore-guest")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(tmp / "disk.qcow2"), "16M"], check=True)
    netns, tap = f"kvmkit-r{os.getpid()}", f"kvr{os.getpid() % 100000}"
    sh("ip", "netns", "add", netns)
    try:
        specs = VirtioSpecs(disks=(DiskSpec(str(tmp / "disk.qcow2"), "qcow2"),), nets=(NetSpec(tap),))
        with entered_netns(netns):
            m = Machine(VmConfig.build(g.vmlinux, initrd=g.initrd, cmdline=g.cmdline, memory=g.memory,
                                       serial=f"file:{tmp / 'boot.log'}", virtio=specs))
        try:
            m.start()
            m.console.expect(PROMPT, timeout=900, alive=lambda: m.running)
            rc, out = m.console.shell(f"ip addr add {GUEST_IP}/24 dev eth0 && ip link set eth0 up", 120)
            assert rc == 0, out
            m.console.expect(PROMPT, timeout=60, alive=lambda: m.running)
            time.sleep(0.5)                 # idle at the prompt, as a user leaves it
            m.save_snapshot(tmp / "snap")
        finally:
            m.close()
        yield tmp, netns, tap
    finally:
        sh("ip", "netns", "del", netns)


def test_restored_in_a_fresh_process_uses_its_disk_and_network(saved):
    tmp, netns, tap = saved
    sock = tmp / "serial.sock"
    t0 = time.monotonic()
    p = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "kvmkit.cli.main", "run",
                          "--restore", str(tmp / "snap"), "--serial", f"unix:{sock}"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    con = None
    try:
        con = SerialClient(str(sock))
        assert con.shell("echo restored") == (0, "restored\n")
        print(f"restored guest answered echo {time.monotonic() - t0:.2f} s after the command started")
        # the tap is new (a new process): the host end gets its address again
        sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"{HOST_IP}/24", "dev", tap)
        sh("ip", "netns", "exec", netns, "ip", "link", "set", tap, "up")
        rc, out = con.shell(f"ping -c 3 -W 5 {HOST_IP}", 120)
        assert rc == 0 and "3 packets received" in out, out
        ping = subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "2", "-W", "5", GUEST_IP],
                              capture_output=True, text=True)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        rc, out = con.shell(f"printf '{MARK.decode()}' | dd of=/dev/vda bs=512 seek={SECTOR} conv=fsync "
                            f"2>/dev/null && sync && dd if=/dev/vda bs=512 skip={SECTOR} count=1 2>/dev/null", 120)
        assert rc == 0 and out.startswith(MARK.decode()), out
        con.s.sendall(b"poweroff\n")
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    finally:
        if con is not None:
            con.close()
        if p.poll() is None:
            p.kill()
            p.communicate()
    raw = tmp / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(tmp / "disk.qcow2"), str(raw)], check=True)
    with open(raw, "rb") as f:
        f.seek(SECTOR * 512)
        assert f.read(len(MARK)) == MARK
    check = subprocess.run(["qemu-img", "check", str(tmp / "disk.qcow2")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout
