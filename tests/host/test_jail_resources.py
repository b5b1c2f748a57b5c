"""Resource control of a jailed VMM (``kvmkit run --isolation on``): the
jail has no cgroup file system and no capabilities, so its supervisor makes
the VM's cgroup tree, places the vCPU threads (host thread ids, read back
here from /proc and the cgroup files) and removes the tree at the end."""

from __future__ import annotations

import os
import struct
import time

import pytest

from kvmkit.host import affinity
from kvmkit.host.cgroups import VmCgroup
from kvmkit.host.jail_process import host_tids, vmm_pid

from .helpers import Vmm, kvmkit_cgroups, run_vmm

pytestmark = pytest.mark.kvm
CPUS = sorted(affinity.online_cpus())


class JailedVmm(Vmm):
    """``kvmkit run --isolation on``: ``pid`` is the supervisor, ``vmm`` the jailed VMM."""

    def __init__(self, kernel, *args: str, **kw) -> None:
        super().__init__(kernel, "--isolation", "on", *args, **kw)

    def vcpu_tids(self, timeout: float = 20) -> list[int]:
        from qemu.qmp import ConnectError
        from kvmkit.manager.vmmlink import qmp
        deadline = time.monotonic() + timeout
        while True:
            try:
                cpus = qmp(self.qmp_path, "query-cpus-fast")
            except (ConnectError, Exception):
                cpus = None
            if cpus:
                self.vmm = vmm_pid(self.pid)
                tids = host_tids(self.pid, [c["thread-id"] for c in cpus])
                if self.vmm != self.pid and all(t != self.vmm for t in tids):
                    return tids
            assert time.monotonic() < deadline, f"vCPU threads never appeared: {cpus}"
            time.sleep(0.05)


def test_jailed_quota_pin_and_fifo_are_applied_from_outside(tiny_guest):
    with JailedVmm(tiny_guest("counter"), "--cpu-quota", "20%", "--vcpu-pin", f"0:{CPUS[-1]}",
                   "--emulator-pin", str(CPUS[0]), "--vcpu-sched", "0:fifo:5", "--memory-limit", "512M") as vm:
        tid, = vm.vcpu_tids()
        assert os.readlink(f"/proc/{vm.vmm}/ns/pid") != os.readlink(f"/proc/{vm.pid}/ns/pid")   # really jailed
        cg = VmCgroup.of_process(vm.vmm)
        assert cg is not None and cg.dirname.startswith(f"kvmkit-{vm.pid}-")
        assert cg.get_bandwidth("global") == (100_000, 20_000) and cg.get_memory()["hard"] == 512 << 20
        cpu_dir = next(d for d in cg.dirs if "/cpu/" in f"{d}/")
        assert str(tid) in (cpu_dir / "vcpu0" / "tasks").read_text().split()
        assert str(vm.vmm) in (cpu_dir / "emulator" / "tasks").read_text().split()
        assert affinity.get_affinity(tid) == {CPUS[-1]} and affinity.get_affinity(vm.vmm) == {CPUS[0]}
        assert affinity.thread_policy(vm.vmm, tid) == ("fifo", 5)
        assert affinity.thread_policy(vm.vmm, vm.vmm) == ("other", 0)
        time.sleep(0.5)
        a, t0 = affinity.thread_cpu_time(vm.vmm, tid), time.monotonic()
        time.sleep(3)
        share = (affinity.thread_cpu_time(vm.vmm, tid) - a) / (time.monotonic() - t0)
        assert 0.05 < share < 0.25, f"the jailed vCPU used {share:.0%} of a CPU"
        made = kvmkit_cgroups(vm.pid)
        assert len(made) == 3                       # cpu, cpuacct, memory on this host's v1 layout
    assert kvmkit_cgroups(vm.pid) == []             # the supervisor removed them


def test_jailed_vcpu_quota_in_each_vcpu_group(tiny_guest):
    with JailedVmm(tiny_guest("counter"), "--vcpu-quota", "10000/50000", "--cpu-shares", "300", cpus=2) as vm:
        tids = vm.vcpu_tids()
        cg = VmCgroup.of_process(vm.vmm)
        assert cg.vcpus == 2 and cg.get_bandwidth("vcpu") == (50_000, 10_000) and cg.get_shares() == 300
        cpu_dir = next(d for d in cg.dirs if "/cpu/" in f"{d}/")
        for i, tid in enumerate(tids):
            assert str(tid) in (cpu_dir / f"vcpu{i}" / "tasks").read_text().split()


def test_jailed_bad_resource_values_are_one_line_errors(tiny_guest):
    """Checked by the supervisor against the VM before any jail, uid or cgroup exists."""
    for args, message in ((("--vcpu-pin", "1:0"), "vCPU pinning names vCPU 1: the VM has 1 (0-0)"),
                          (("--memory-limit", "32M"), "memory hard limit 32M is below the guest's 64M of RAM "
                                                      "(the VMM needs that and more)")):
        p = run_vmm(tiny_guest("counter"), "--isolation", "on", *args)
        assert p.returncode == 1 and p.stderr == f"kvmkit run: error: {message}\n", p.stderr


def test_jailed_file_backed_shared_ram_is_the_host_file(tiny_guest, tmp_path):
    path = tmp_path / f"guest-ram-{os.getpid()}"
    with JailedVmm(tiny_guest("counter"), "--mem-file", f"{path},share=on", "--ksm", "off") as vm:
        vm.vcpu_tids()
        assert path.stat().st_size == 64 << 20
        fd = os.open(path, os.O_RDONLY)
        try:
            seen = struct.unpack("<Q", os.pread(fd, 8, 0x5000))[0]
            time.sleep(0.3)
            assert struct.unpack("<Q", os.pread(fd, 8, 0x5000))[0] > seen    # the guest's counter, live
        finally:
            os.close(fd)
    assert path.stat().st_uid == 0                   # handed back to its owner
