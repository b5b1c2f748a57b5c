"""A fast-guest domain (Linux with busybox user space) through ``kvmkit
virsh``, as a person at a terminal drives it: start, attach the console on
a pseudo-terminal, run commands, detach with Ctrl-], attach again; a
snapshot of the running domain, then writes to its disk and memory, then
``snapshot-revert``: both have their old content back; ``reboot`` boots it
again in the same VMM; ``shutdown`` (the ACPI power button) ends it through
the guest's acpid; a linked clone boots
beside the original, with its own MAC and its own disk writes."""

from __future__ import annotations

import os
import sys
import time

import pytest

from kvmkit.block import create_image, open_image
from kvmkit.errors import ConfigError
from kvmkit.guest.assets import fast_guest

from .helpers import REPO, PtyConsole

pytestmark = [pytest.mark.kvm, pytest.mark.slow, pytest.mark.userspace]

PROMPT = rb"root@kvmkit:~# "
BOOT = 900.0                    # to the shell on a shared, emulating host
SECTOR_TEXT = 24


def _xml(name: str, disk, tap: str) -> str:
    g = fast_guest(build=False, progress=False)
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>{g.memory.rstrip('M')}</memory>"
            f"<vcpu>1</vcpu><os><type arch='x86_64'>hvm</type><kernel>{g.vmlinux}</kernel>"
            f"<initrd>{g.initrd}</initrd><cmdline>{g.cmdline}</cmdline></os><features><acpi/></features>"
            f"<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
            f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>"
            f"<interface type='ethernet'><target dev='{tap}'/><model type='virtio'/></interface>"
            f"<serial type='pty'/><console type='pty'/></devices></domain>")


@pytest.fixture
def guest_assets():
    try:
        return fast_guest(build=False, progress=False)
    except ConfigError as e:
        pytest.skip(str(e))


def _console(state_dir, name: str) -> PtyConsole:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    c = PtyConsole([sys.executable, "-m", "kvmkit.cli.main", "virsh", "-c", str(state_dir), "console", name], env)
    c.expect(rb"Escape character is \^\]", 60)
    return c


def _booted(c: PtyConsole) -> None:
    """At the first prompt of a boot: kernel messages off the console, so
    none lands inside a command's output (a loaded host makes the kernel talk)."""
    c.expect(PROMPT, BOOT)
    _run(c, "dmesg -n 1")


def _at_prompt(c: PtyConsole, timeout: float = 60.0) -> None:
    c.send(b"\n")
    c.expect(PROMPT, timeout)


def _run(c: PtyConsole, command: str) -> str:
    status, out = c.shell(command, timeout=300)
    assert status == 0, (command, out)
    return out.strip()


def _write_disk(c: PtyConsole, text: str) -> None:
    _run(c, f"printf '%-{SECTOR_TEXT}s' {text} | dd of=/dev/vda bs={SECTOR_TEXT} count=1 conv=fsync 2>/dev/null")


def _disk_text(path) -> str:
    with open_image(str(path), readonly=True) as img:
        return img.pread(0, SECTOR_TEXT).decode().strip()


def _wait_state(virsh, name: str, state: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        out = virsh("-q", "domstate", "--reason", name).stdout.strip()
        if out.startswith(state):
            return out
        assert time.monotonic() < deadline, f"{name} is {out}, not {state}"
        time.sleep(0.5)


def test_console_snapshot_revert_shutdown_and_a_clone_beside_it(guest_assets, host, state_dir, virsh, tmp_path):
    disk = tmp_path / "fg.qcow2"
    create_image(str(disk), "qcow2", 16 << 20)
    tag = f"{os.getpid() % 100000}"
    xml = tmp_path / "fg.xml"
    xml.write_text(_xml("fg", disk, f"kf{tag}a"))
    virsh("define", str(xml), check=True)
    mac = host.lookup("fg").definition.interfaces[0].mac
    assert virsh("start", "fg").stdout == "Domain 'fg' started\n\n"

    c = _console(state_dir, "fg")                             # attach, run, detach
    _booted(c)
    assert _run(c, "cat /sys/class/net/eth0/address") == mac
    _write_disk(c, "before-snapshot")
    _run(c, "echo memory-before > /tmp/f")
    assert c.detach() == 0
    assert virsh("-q", "domstate", "fg").stdout == "running\n"     # detaching leaves it running

    assert virsh("-q", "snapshot-create-as", "fg", "s1").stdout == "Domain snapshot s1 created\n"
    c = _console(state_dir, "fg")                             # attach again: the same shell
    _at_prompt(c)
    assert _run(c, "cat /tmp/f") == "memory-before"
    _write_disk(c, "after-snapshot")
    _run(c, "echo memory-after > /tmp/f")
    assert _run(c, f"dd if=/dev/vda bs={SECTOR_TEXT} count=1 2>/dev/null") == "after-snapshot"
    assert c.detach() == 0

    virsh("snapshot-revert", "fg", "s1", check=True)
    assert virsh("-q", "domstate", "--reason", "fg").stdout == "running (from snapshot)\n"
    c = _console(state_dir, "fg")
    _at_prompt(c)
    assert _run(c, "cat /tmp/f") == "memory-before"          # memory as it was
    assert c.detach() == 0

    assert virsh("reboot", "fg").stdout == "Domain 'fg' is being rebooted\n\n"
    c = _console(state_dir, "fg")
    c.expect(rb"Linux version", BOOT)                         # a new boot in the same VMM
    _booted(c)
    assert c.shell("cat /tmp/f")[0] != 0                      # a fresh tmpfs
    assert c.detach() == 0
    assert virsh("-q", "domstate", "fg").stdout == "running\n"

    assert virsh("shutdown", "fg").stdout == "Domain 'fg' is being shutdown\n\n"
    assert _wait_state(virsh, "fg", "shut off", 300) == "shut off (shutdown)"   # acpid ran poweroff
    assert _disk_text(disk) == "before-snapshot"              # and the disk as it was

    virsh("snapshot-delete", "fg", "s1", check=True)          # a linked clone needs no snapshots
    virsh("clone", "--original", "fg", "--name", "fg2", "--auto-clone", check=True)
    clone = host.lookup("fg2").definition
    nic = clone.interfaces[0]
    assert nic.mac != mac
    host.define(_xml("fg2", clone.disks[0].source, f"kf{tag}b").replace(
        "<interface type='ethernet'>", f"<interface type='ethernet'><mac address='{nic.mac}'/>").replace(
        "<name>fg2</name>", f"<name>fg2</name><uuid>{clone.uuid}</uuid>"))   # a tap name of this run
    virsh("start", "fg", check=True)
    virsh("start", "fg2", check=True)                         # both run at once
    c1, c2 = _console(state_dir, "fg"), _console(state_dir, "fg2")
    _booted(c1)
    _booted(c2)
    assert _run(c2, "cat /sys/class/net/eth0/address") == nic.mac
    assert _run(c2, f"dd if=/dev/vda bs={SECTOR_TEXT} count=1 2>/dev/null") == "before-snapshot"
    _write_disk(c2, "clone-write")
    _write_disk(c1, "original-write")
    assert _run(c1, f"dd if=/dev/vda bs={SECTOR_TEXT} count=1 2>/dev/null") == "original-write"
    assert c1.detach() == 0 and c2.detach() == 0
    virsh("destroy", "fg", check=True)
    virsh("destroy", "fg2", check=True)
    assert _disk_text(disk) == "original-write"               # disk writes kept apart
    assert _disk_text(clone.disks[0].source) == "clone-write"
    assert host.check().problems == []
