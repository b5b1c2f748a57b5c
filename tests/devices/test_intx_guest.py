"""The fast Linux guest booted with ``pci=nomsi``: its virtio-pci drivers
fall back to INTx (Linux's vp_find_vqs_intx), so every interrupt is a
level-triggered IOAPIC input asserted by the device and deasserted by the
driver's ISR read.  One boot per vCPU count (1 and 2) serves every check:
the interrupts are IO-APIC lines (no PCI-MSI), a disk pattern read and a
guest write read back on the host, ping both ways over a tap, and no
"nobody cared" (a line left high) in the kernel log."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess

import pytest

from kvmkit.devices.virtio.config import DiskSpec, NetSpec, VirtioSpecs

from .helpers import entered_netns, sh

pytestmark = [pytest.mark.slow, pytest.mark.kvm, pytest.mark.userspace]

BOOT_TIMEOUT = float(os.environ.get("KVMKIT_BOOT_TIMEOUT", "900"))
MB = 1 << 20
PROMPT = rb"root@kvmkit:~# "
PATTERN = os.urandom(4 * MB)


class Guest:
    def __init__(self, m, tmp, netns: str, host_ip: str, guest_ip: str) -> None:
        self.m, self.tmp, self.netns, self.host_ip, self.guest_ip = m, tmp, netns, host_ip, guest_ip

    def sh(self, command: str, timeout: float = 300) -> str:
        rc, out = self.m.console.shell(command, timeout, alive=lambda: self.m.running)
        assert rc == 0, f"{command!r} exited {rc}: {out}"
        return out.strip()


@pytest.fixture(scope="module", params=[1, 2], ids=["1cpu", "2cpus"])
def guest(request, tmp_path_factory):
    from kvmkit.guest.assets import fast_guest
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine
    cpus = request.param
    g = fast_guest(build=True, progress=False)
    tmp = tmp_path_factory.mktemp(f"intx{cpus}")
    (tmp / "disk.raw").write_bytes(PATTERN + bytes(4 * MB))
    netns = f"kvmkit-ix{os.getpid()}-{cpus}"
    host_ip, guest_ip = f"10.78.{cpus}.1", f"10.78.{cpus}.2"
    sh("ip", "netns", "add", netns)
    specs = VirtioSpecs(disks=(DiskSpec(str(tmp / "disk.raw"), "raw"),), nets=(NetSpec("kvix0"),))
    log = tmp / "console.log"
    print(f"INTx guest console ({cpus} vCPUs): {log}")
    try:
        with entered_netns(netns):
            m = Machine(VmConfig.build(g.vmlinux, initrd=g.initrd, cmdline=g.cmdline + " pci=nomsi",
                                       memory=g.memory, cpus=cpus, serial=f"file:{log}", virtio=specs))
        m.start()
        try:
            m.console.expect(PROMPT, timeout=BOOT_TIMEOUT, alive=lambda: m.running)
            sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"{host_ip}/24", "dev", "kvix0")
            sh("ip", "netns", "exec", netns, "ip", "link", "set", "kvix0", "up")
            yield Guest(m, tmp, netns, host_ip, guest_ip)
        finally:
            m.close()
    finally:
        sh("ip", "netns", "del", netns)


def virtio_irqs(guest) -> dict[str, tuple[str, int]]:
    """device name -> (the line's chip/type text, total count) from /proc/interrupts."""
    out = {}
    for line in guest.sh("cat /proc/interrupts").splitlines():
        if "virtio" in line:
            fields = line.split()
            counts = [int(f) for f in fields[1:] if f.isdigit()]
            out[fields[-1]] = (line, sum(counts))
    return out


def test_drivers_use_ioapic_lines_not_msi(guest):
    assert "pci=nomsi" in guest.sh("cat /proc/cmdline")
    irqs = virtio_irqs(guest)
    assert irqs, guest.sh("cat /proc/interrupts")
    for name, (line, _) in irqs.items():
        assert "IO-APIC" in line and "fasteoi" in line and "MSI" not in line, line
        assert re.search(r"IO-APIC\s+2[0-3]-fasteoi", line), line   # the PCI lines 20-23
    assert "PCI-MSI" not in guest.sh("cat /proc/interrupts")


def test_disk_reads_the_host_pattern_and_the_host_reads_the_guest_write(guest):
    before = sum(c for _, c in virtio_irqs(guest).values())
    out = guest.sh(f"dd if=/dev/vda bs=1M count=4 iflag=direct 2>/dev/null | sha256sum", timeout=300)
    assert out.split()[0] == hashlib.sha256(PATTERN).hexdigest()
    guest.sh("dd if=/dev/vda of=/dev/vda bs=1M count=2 seek=4 oflag=direct conv=fsync 2>/dev/null",
             timeout=300)
    with open(guest.tmp / "disk.raw", "rb") as f:
        f.seek(4 * MB)
        assert f.read(2 * MB) == PATTERN[:2 * MB]
    assert sum(c for _, c in virtio_irqs(guest).values()) > before   # completions came as INTx


def test_ping_both_ways(guest):
    guest.sh(f"ip addr add {guest.guest_ip}/24 dev eth0 && ip link set eth0 up")
    out = guest.sh(f"ping -c 3 -W 10 {guest.host_ip}", timeout=120)
    assert "3 packets received" in out, out
    p = subprocess.run(["ip", "netns", "exec", guest.netns, "ping", "-c", "3", "-w", "60", guest.guest_ip],
                       capture_output=True, text=True)
    assert " 0% packet loss" in p.stdout, p.stdout


def test_no_stuck_line_in_the_kernel_log(guest):
    log = guest.sh("dmesg")
    assert "nobody cared" not in log and "Disabling IRQ" not in log, log
    assert "probe of virtio" not in log, log                  # "probe of virtio0 failed with error -28"
    if guest.m.config.cpus == 2:
        assert guest.sh("nproc") == "2"
