"""kvmkit's Linux guest under resource control and a shared file-backed
RAM: it boots to its shell with its vCPUs pinned, in a memory-limited
cgroup, and the host file holds what the guest wrote."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kvmkit.host import affinity
from kvmkit.host.cgroups import VmCgroup

from .helpers import Vmm

pytestmark = [pytest.mark.kvm, pytest.mark.slow, pytest.mark.userspace]
PROMPT = b"root@kvmkit:~# "


def test_linux_boots_pinned_limited_on_shared_file_ram(tmp_path):
    from kvmkit.guest.assets import fast_guest
    g = fast_guest(build=False)
    # on tmpfs, as shared guest RAM belongs: a file on a disk is written back, and every page
    # written back is write-protected again (an exit per first write after each writeback)
    ram, console = Path(f"/dev/shm/kvmkit-test-ram-{os.getpid()}"), tmp_path / "console.log"
    cpus = sorted(affinity.online_cpus())
    vm = Vmm(g.vmlinux, "--initrd", str(g.initrd), "--cmdline", g.cmdline, "--vcpu-pin", f"0:{cpus[0]}",
             "--vcpu-pin", f"1:{cpus[-1]}", "--memory-limit", "600M", "--cpu-shares", "512",
             "--mem-file", f"{ram},share=on", "--mem-prealloc", "--serial", f"file:{console}",
             memory="128M", cpus=2)
    try:
        vm.wait_ready()
        deadline = time.monotonic() + 600
        while not (console.exists() and PROMPT in console.read_bytes()):
            assert vm.proc.poll() is None, vm.proc.stderr.read()
            assert time.monotonic() < deadline, "no shell prompt"
            time.sleep(0.5)
        tids = vm.vcpu_tids()
        assert [affinity.get_affinity(t) for t in tids] == [{cpus[0]}, {cpus[-1]}]
        mem = VmCgroup.of_process(vm.pid).get_memory()
        assert mem["hard"] == 600 << 20 and 128 << 20 < mem["usage"] < 600 << 20   # preallocated RAM counted
        data = ram.read_bytes()
        assert len(data) == 128 << 20
        written = sum(1 for off in range(0, len(data), 4096) if data[off:off + 4096].count(0) != 4096)
        assert written > 2000, written             # kernel, initramfs, page cache: in the host's file
    finally:
        vm.stop()
        ram.unlink(missing_ok=True)
