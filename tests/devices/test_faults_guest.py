"""Faults a VMM meets in production, against the fast Linux guest (one
boot serves every check; the SIGKILL rounds restore its snapshot in child
processes):

- SIGKILL of the VMM at random points while the guest writes and flushes a
  qcow2 disk, many times: ``qemu-img check`` finds no corruption (exit 0,
  or 3 = leaked clusters only: an allocation whose refcount was written but
  whose L2 entry was not, which costs space and nothing else, as in QEMU),
  and every record the guest saw flushed is in the image;
- the host disk fills during a qcow2 write: werror=stop pauses the VM with
  a BLOCK_IO_ERROR event, space is freed, QMP ``cont`` finishes the write,
  the image checks clean (no leaked cluster: a failed allocation is given
  back) and holds the data; werror=report gives the guest an I/O error, the
  VM keeps running, and once space is back the image checks clean;
- a tap deleted under the running VM, a QMP client that disconnects
  mid-command, a console client that stops reading: the VM keeps running.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from qemu.qmp import QMPClient

from kvmkit.devices.virtio.config import DiskSpec, NetSpec, VirtioSpecs

from .helpers import entered_netns, fill_fs, sh

pytestmark = [pytest.mark.slow, pytest.mark.kvm, pytest.mark.userspace]

ROOT = Path(__file__).resolve().parents[2]
BOOT_TIMEOUT = float(os.environ.get("KVMKIT_BOOT_TIMEOUT", "900"))
PROMPT = rb"root@kvmkit:~# "
MB = 1 << 20
KILL_ROUNDS = 12
BATCH = 64 << 10                           # one dd: 64 KiB = 16 fresh 4 KiB clusters, then a flush
BATCH_STRIDE = 5 * BATCH                   # batches apart, so each one allocates (and some an L2 table)
LINE = b"KVMKIT-FAULT-PATTERN-0123456789\n"
# 64 KiB of pattern in a guest file, made once: busybox `yes` writes a line per
# syscall, and syscalls are what is slow on emulating hosts.
PATTERN_FILE = "[ -s /tmp/pat ] || yes KVMKIT-FAULT-PATTERN-0123456789 | head -c 65536 > /tmp/pat"
PATTERN_CMD = "for i in $(seq {blocks}); do cat /tmp/pat; done"


def _pattern(n: int) -> bytes:
    one = (LINE * (65536 // len(LINE) + 1))[:65536]
    return (one * (n // 65536 + 1))[:n]


def _qcow2(path: Path, size: str = "64M", cluster: int = 4096) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"cluster_size={cluster}",
                    str(path), size], check=True)


def _check(path: Path) -> tuple[int, dict]:
    p = subprocess.run(["qemu-img", "check", "--output=json", str(path)], capture_output=True, text=True)
    return p.returncode, json.loads(p.stdout) if p.stdout.strip() else {"stderr": p.stderr}


def _raw(path: Path, out: Path) -> bytes:
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(path), str(out)], check=True)
    return out.read_bytes()


class Guest:
    def __init__(self, m, tmp: Path, netns: str, qmp_path: str, serial_path: str, mounts, snap: Path,
                 specs: VirtioSpecs) -> None:
        self.m, self.tmp, self.netns, self.qmp_path = m, tmp, netns, qmp_path
        self.serial_path, self.mounts, self.snap, self.specs = serial_path, mounts, snap, specs

    def rc(self, command: str, timeout: float = 300) -> tuple[int, str]:
        return self.m.console.shell(command, timeout, alive=lambda: self.m.running)

    def sh(self, command: str, timeout: float = 300) -> str:
        rc, out = self.rc(command, timeout)
        assert rc == 0, f"{command!r} exited {rc}: {out}"
        return out.strip()

    def alive(self) -> None:
        """The VM runs and its guest answers."""
        assert self.m.running
        assert self.sh("echo alive-$((6*7))", timeout=120) == "alive-42"


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)


@pytest.fixture(scope="module")
def guest():
    from kvmkit.guest.assets import fast_guest
    from kvmkit.monitor.server import QmpServer
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine
    g = fast_guest(build=True, progress=False)
    tmp = Path(tempfile.mkdtemp(prefix=f"kvf{os.getpid()}-", dir="/tmp"))
    full_a, full_b = tmp / "fa", tmp / "fb"
    _mount_tmpfs(full_a, "12m")
    _mount_tmpfs(full_b, "12m")
    _qcow2(tmp / "kill.qcow2")
    _qcow2(full_a / "stop.qcow2")
    _qcow2(full_b / "report.qcow2")
    shutil.copy(tmp / "kill.qcow2", tmp / "kill-pristine.qcow2")
    netns = f"kvmkit-f{os.getpid()}"
    sh("ip", "netns", "add", netns)
    specs = VirtioSpecs(disks=(DiskSpec(str(tmp / "kill.qcow2"), "qcow2"),
                               DiskSpec(str(full_a / "stop.qcow2"), "qcow2", werror="stop"),
                               DiskSpec(str(full_b / "report.qcow2"), "qcow2", werror="report")),
                        nets=(NetSpec("kvf0"),))
    serial_path = str(tmp / "serial.sock")
    try:
        with entered_netns(netns):
            m = Machine(VmConfig.build(g.vmlinux, initrd=g.initrd, cmdline=g.cmdline, memory=g.memory,
                                       serial=f"unix:{serial_path}", virtio=specs))
        m.start()
        server = None
        try:
            m.console.expect(PROMPT, timeout=BOOT_TIMEOUT, alive=lambda: m.running)
            m.console.shell("true", 120)
            snap = tmp / "snap"
            m.save_snapshot(snap)                       # idle at the shell, the disks untouched
            server = QmpServer(m, f"unix:{tmp / 'qmp.sock'}")
            server.start()
            yield Guest(m, tmp, netns, str(tmp / "qmp.sock"), serial_path, (full_a, full_b), snap, specs)
        finally:
            if server is not None:
                server.close()
            m.close()
    finally:
        sh("ip", "netns", "del", netns)
        for mnt in (full_a, full_b):
            subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


# -- SIGKILL while the guest writes a qcow2 disk ---------------------------------------

CHILD = r"""
import sys
from kvmkit.devices.virtio.config import DiskSpec, NetSpec, VirtioSpecs
from kvmkit.vmm.config import SerialSpec
from kvmkit.vmm.machine import Machine
snap, log, disk, a, b, tap, command = sys.argv[1:]
specs = VirtioSpecs(disks=(DiskSpec(disk, "qcow2"), DiskSpec(a, "qcow2"), DiskSpec(b, "qcow2")),
                    nets=(NetSpec(tap),))
m = Machine.restore(snap, serial=SerialSpec.parse("file:" + log), virtio=specs)
m.start()
m.console.send(command + "\n")
print("started", flush=True)
m.wait()
"""

# Batch i: 64 KiB of "REC-i" lines at offset i*BATCH_STRIDE, written O_DIRECT and
# flushed (conv=fsync: a virtio-blk FLUSH) before "FLUSHED-i" is printed.
WRITER = ("i=0; while :; do i=$((i+1)); { yes REC-$i | head -c 4096 > /tmp/b; cat /tmp/b /tmp/b /tmp/b /tmp/b "
          "/tmp/b /tmp/b /tmp/b /tmp/b /tmp/b /tmp/b /tmp/b /tmp/b /tmp/b /tmp/b /tmp/b /tmp/b; } | "
          f"dd of=/dev/vda bs=64k iflag=fullblock seek=$((i*{BATCH_STRIDE // BATCH})) oflag=direct conv=fsync "
          "2>/dev/null && echo FLUSHED-$i; done")


def _batch(i: int) -> bytes:
    line = b"REC-%d\n" % i
    block = (line * (4096 // len(line) + 1))[:4096]
    return block * 16


def test_sigkill_while_writing_qcow2_never_corrupts_and_keeps_flushed_data(guest):
    rng = random.Random(os.getpid())
    leaks = 0
    flushed_total = 0
    for rnd in range(KILL_ROUNDS):
        d = guest.tmp / f"round{rnd}"
        d.mkdir()
        disk = d / "kill.qcow2"
        shutil.copy(guest.tmp / "kill-pristine.qcow2", disk)
        others = []
        for i in (1, 2):
            p = d / f"other{i}.qcow2"
            _qcow2(p)
            others.append(str(p))
        log = d / "serial.log"
        tap = f"kvk{os.getpid() % 10000}r{rnd}"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(guest.snap), str(log), str(disk), *others,
                                 tap, WRITER], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert proc.stdout.readline().strip() == b"started", proc.stderr.read()
            deadline = time.monotonic() + 300
            while not re.search(rb"FLUSHED-\d", log.read_bytes() if log.exists() else b""):   # writing began
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.05)
            time.sleep(rng.uniform(0.0, 3.0))             # a random point in the write loop
            seen = log.read_bytes()
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        flushed = max(int(n) for n in re.findall(rb"FLUSHED-(\d+)", seen))
        flushed_total += flushed
        rc, report = _check(disk)
        assert rc in (0, 3), (rnd, rc, report)            # 2 would be corruption
        assert report.get("corruptions", 0) == 0 and report.get("check-errors", 0) == 0, report
        leaks += rc == 3
        data = _raw(disk, d / "disk.raw")
        for i in range(1, flushed + 1):
            off = i * BATCH_STRIDE
            assert data[off:off + BATCH] == _batch(i), (rnd, i, flushed, data[off:off + 32])
        shutil.rmtree(d)
    print(f"{KILL_ROUNDS} SIGKILL rounds, {flushed_total} flushed 64 KiB batches verified, "
          f"{leaks} rounds with leaked clusters only (qemu-img check 3)")
    guest.alive()


# -- the host disk fills during a qcow2 write ------------------------------------------


def test_disk_full_with_werror_stop_pauses_and_cont_completes(guest):
    n = 3 * MB
    guest.sh(PATTERN_FILE, timeout=600)
    filler = fill_fs(guest.mounts[0])
    os.truncate(filler, os.path.getsize(filler) - 1 * MB)    # 1 MiB left: the write needs 3

    async def scenario() -> list[dict]:
        qmp = QMPClient("werror")
        await qmp.connect(guest.qmp_path)
        guest.m.console.send(f"{PATTERN_CMD.format(blocks=n // 65536)} | dd of=/dev/vdb bs=64k "
                             "iflag=fullblock oflag=direct conv=fsync 2>/dev/null; echo DD-DONE $?\n")
        events = []
        while not any(e["event"] == "STOP" for e in events):
            events.append(await asyncio.wait_for(qmp.events.get(), 300))
        status = await qmp.execute("query-status")
        assert status["running"] is False, status
        await asyncio.sleep(1)
        assert not re.search(rb"DD-DONE \d", bytes(guest.m.console.output[-4096:]))   # held, not failed
        filler.unlink()                                   # space comes back
        await qmp.execute("cont")
        assert (await qmp.execute("query-status"))["running"] is True
        await qmp.disconnect()
        return events

    events = asyncio.run(scenario())
    errs = [e for e in events if e["event"] == "BLOCK_IO_ERROR"]
    assert errs and errs[0]["data"]["device"] == "virtio1" and errs[0]["data"]["operation"] == "write"
    assert errs[0]["data"]["action"] == "stop" and errs[0]["data"]["nospace"] is True, errs
    m = guest.m.console.expect(rb"DD-DONE (\d+)", timeout=300, alive=lambda: guest.m.running)
    assert m.group(1) == b"0", guest.m.console.text[-2000:]
    guest.sh("sync")
    rc, report = _check(Path(guest.specs.disks[1].path))
    # the allocation that hit ENOSPC gave its clusters back: the retry leaks nothing
    assert rc == 0 and report.get("leaks", 0) == 0, report
    img = Path(guest.specs.disks[1].path)
    assert _raw(img, guest.tmp / "stop.raw")[:n] == _pattern(n)
    (guest.tmp / "stop.raw").unlink()
    guest.alive()


def test_disk_full_with_werror_report_is_an_io_error_in_the_guest(guest):
    guest.sh(PATTERN_FILE, timeout=600)
    filler = fill_fs(guest.mounts[1])
    os.truncate(filler, os.path.getsize(filler) - 1 * MB)
    write = f"{PATTERN_CMD.format(blocks=48)} | dd of=/dev/vdc bs=64k iflag=fullblock oflag=direct conv=fsync"
    rc, out = guest.rc(write)
    assert rc != 0 and "I/O error" in out, out
    assert "I/O error" in guest.sh("dmesg | tail -20")
    rc, report = _check(Path(guest.specs.disks[2].path))
    assert rc in (0, 3) and report.get("corruptions", 0) == 0 and report.get("check-errors", 0) == 0, report
    filler.unlink()
    guest.sh(f"{write} 2>/dev/null")
    guest.sh("sync")
    rc, report = _check(Path(guest.specs.disks[2].path))       # the failed writes leaked nothing
    assert rc == 0 and report.get("leaks", 0) == 0, report
    guest.alive()


# -- host plumbing that goes away under the VM -------------------------------------------

def test_tap_deleted_under_the_running_vm(guest):
    guest.sh("ip addr add 10.79.1.2/24 dev eth0 && ip link set eth0 up")
    sh("ip", "netns", "exec", guest.netns, "ip", "link", "del", "kvf0")
    rc, out = guest.rc("ping -c 2 -W 2 10.79.1.1", timeout=120)
    assert rc != 0                                         # nothing there any more, and no hang
    guest.alive()
    net = [d for d in guest.m.virtio_devices if d.kind == "virtio-net"][0]
    assert guest.m.running and net.io is not None


def test_qmp_clients_that_disconnect_mid_command(guest):
    greeting_then = [b'{"execute":"qmp_capabilities"}\n']
    cuts = [b'{"execute":"query-status"}', b'{"execute":"query-bl', b'{"execute":"human-monitor-command",'
            b'"arguments":{"command-line":"info status"}}', b'{"execute":"stop"}{"execute":"cont"}',
            b'{"execute":"query-block"}' * 50]
    for i in range(25):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(guest.qmp_path)
        s.settimeout(10)
        s.recv(4096)                                       # the greeting
        s.sendall(greeting_then[0])
        if i % 2:
            s.recv(4096)
        s.sendall(cuts[i % len(cuts)])
        if i % 3 == 0:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")   # RST, not FIN
        s.close()

    async def check() -> dict:
        qmp = QMPClient("after")
        await qmp.connect(guest.qmp_path)
        st = await qmp.execute("query-status")
        if not st["running"]:
            await qmp.execute("cont")                     # a cut 'stop' may have landed
            st = await qmp.execute("query-status")
        await qmp.disconnect()
        return st

    assert asyncio.run(check())["running"] is True
    guest.alive()


def test_console_client_that_stops_reading(guest):
    idle = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    idle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    idle.connect(guest.serial_path)                        # the first client: gets the replay too
    try:
        # The replay of the boot log alone is more than a 4 KiB receive
        # buffer holds; then ~10 KiB more straight to the console while the
        # client reads nothing.  Each byte costs the guest's emulated tty
        # path ~5 ms here (1500 lines took 390 s), so the flood is small:
        # the client that blocks the socket for good (MiBs past the send
        # buffer) is tests/vmm/test_console_socket.py's, without a guest.
        guest.sh("yes kvmkit-console-flood-0123456789abcdef | head -n 250 >/dev/console", timeout=600)
        assert guest.sh("echo still-$((6*7))", timeout=120) == "still-42"
        guest.alive()
        idle.setblocking(False)
        got = b""
        try:
            while True:
                chunk = idle.recv(1 << 16)
                if not chunk:
                    break
                got += chunk
        except BlockingIOError:
            pass
        assert got                                         # it still gets (the newest) output once it reads
    finally:
        idle.close()
    guest.alive()
