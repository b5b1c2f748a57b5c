"""vCPU pinning, CPU bandwidth and real-time scheduling of a real VMM
(``kvmkit run`` in a child process) running a CPU-bound tiny guest: what
the host's scheduler does with its threads is read back from /proc and the
cgroup files, not from kvmkit."""

from __future__ import annotations

import time

import pytest

from kvmkit.host import affinity
from kvmkit.host.cgroups import VmCgroup

from .helpers import Vmm, kvmkit_cgroups

pytestmark = pytest.mark.kvm
CPUS = sorted(affinity.online_cpus())


@pytest.mark.parametrize("cpu", CPUS)
def test_pinned_vcpu_thread_stays_on_its_cpu(tiny_guest, cpu):
    with Vmm(tiny_guest("counter"), "--vcpu-pin", f"0:{cpu}") as vm:
        tid, = vm.vcpu_tids()
        assert affinity.get_affinity(tid) == {cpu}
        seen = set()
        for _ in range(40):                       # 2 s of a spinning guest, sampled
            seen.add(affinity.last_cpu(vm.pid, tid))
            time.sleep(0.05)
        assert seen == {cpu}
        assert affinity.thread_cpu_time(vm.pid, tid) > 0.2, "the vCPU thread did not run"
        assert affinity.get_affinity(vm.pid) == set(CPUS)      # only the vCPU is pinned, not the main thread


def test_emulator_pin_and_vcpu_pin_apart(tiny_guest):
    with Vmm(tiny_guest("counter"), "--vcpu-pin", f"0:{CPUS[-1]}", "--emulator-pin", str(CPUS[0])) as vm:
        tid, = vm.vcpu_tids()
        assert affinity.get_affinity(tid) == {CPUS[-1]}
        assert affinity.get_affinity(vm.pid) == {CPUS[0]}      # the main thread


def _usage(pid: int) -> float:
    cg = VmCgroup.of_process(pid)
    assert cg is not None, "the VMM is in no kvmkit cgroup"
    return cg.cpu_usage()["time"] / 1e9


@pytest.mark.parametrize("run", range(3))
def test_quota_holds_a_spinning_guest_near_20_percent(tiny_guest, run):
    with Vmm(tiny_guest("counter"), "--cpu-quota", "20%") as vm:
        tid, = vm.vcpu_tids()
        cg = VmCgroup.of_process(vm.pid)
        assert cg.get_bandwidth("global") == (100_000, 20_000)
        time.sleep(0.5)
        a, ta, t0 = _usage(vm.pid), affinity.thread_cpu_time(vm.pid, tid), time.monotonic()
        th0 = cg.throttling()
        time.sleep(4)
        b, tb, t1 = _usage(vm.pid), affinity.thread_cpu_time(vm.pid, tid), time.monotonic()
        th1 = cg.throttling()
        share = (b - a) / (t1 - t0)
        # at most 20% (+ a period's rounding); at least half of it on a loaded 2-CPU host
        assert 0.10 < share < 0.23, f"the VM used {share:.0%} of a CPU"
        assert (tb - ta) / (t1 - t0) < 0.25      # the vCPU thread's own time, from /proc
        periods = th1["nr_periods"] - th0["nr_periods"]
        # the quota is what held it: the guest wanted more and was stopped (on a quiet host in
        # nearly every period; under load the host's other work takes some of its 20 ms first)
        assert periods >= 20 and th1["nr_throttled"] - th0["nr_throttled"] >= max(2, periods // 10), (th0, th1)


def test_without_quota_the_same_guest_is_never_throttled(tiny_guest):
    """The control for the quota test: shares alone set no bandwidth limit."""
    with Vmm(tiny_guest("counter"), "--cpu-shares", "1024") as vm:
        vm.vcpu_tids()
        cg = VmCgroup.of_process(vm.pid)
        time.sleep(2)
        assert cg.get_shares() == 1024 and cg.get_bandwidth("global")[1] == -1
        assert cg.throttling()["nr_throttled"] == 0
        assert _usage(vm.pid) > 0.1


def test_vcpu_quota_and_shares_in_the_vcpu_group(tiny_guest):
    with Vmm(tiny_guest("counter"), "--vcpu-quota", "10000/50000", "--cpu-shares", "300", cpus=2) as vm:
        vm.vcpu_tids()
        cg = VmCgroup.of_process(vm.pid)
        assert cg.vcpus == 2
        assert cg.get_bandwidth("vcpu") == (50_000, 10_000)
        assert cg.get_bandwidth("global")[1] == -1
        assert cg.get_shares() == 300


def test_fifo_vcpu(tiny_guest):
    with Vmm(tiny_guest("counter"), "--vcpu-sched", "0:fifo:5", "--vcpu-pin", f"0:{CPUS[-1]}") as vm:
        tid, = vm.vcpu_tids()
        assert affinity.thread_policy(vm.pid, tid) == ("fifo", 5)
        assert affinity.thread_policy(vm.pid, vm.pid) == ("other", 0)


def test_cgroups_removed_when_the_vmm_ends(tiny_guest):
    vm = Vmm(tiny_guest("counter"), "--cpu-quota", "50%", "--memory-limit", "512M").wait_ready()
    vm.vcpu_tids()
    made = kvmkit_cgroups(vm.pid)
    assert len(made) == 3                          # cpu, cpuacct and memory on this host's v1 layout
    rc, err = vm.stop()
    assert rc == 0, err
    assert kvmkit_cgroups(vm.pid) == []


def test_a_killed_vmm_s_cgroups_are_swept(tiny_guest):
    vm = Vmm(tiny_guest("counter"), "--cpu-quota", "50%").wait_ready()
    vm.vcpu_tids()
    vm.proc.kill()
    vm.stop()
    assert kvmkit_cgroups(vm.pid)                  # SIGKILL: nobody removed them
    with Vmm(tiny_guest("counter"), "--cpu-quota", "50%") as other:
        other.vcpu_tids()
        assert kvmkit_cgroups(vm.pid) == []        # the next VMM swept them


def test_vcpu_threads_are_named_and_reported_by_query_cpus_fast(tiny_guest):
    from pathlib import Path
    with Vmm(tiny_guest("idle"), cpus=2) as vm:
        tids = vm.vcpu_tids()
        names = [Path(f"/proc/{vm.pid}/task/{t}/comm").read_text().strip() for t in tids]
        assert names == ["CPU 0/KVM", "CPU 1/KVM"]


def test_query_cpus_reports_the_vcpu_threads_once_started(tiny_guest, machine):
    import os
    m = machine(tiny_guest("idle"), cpus=2, start=False)
    assert [c["thread-id"] for c in m.query_cpus()] == [os.getpid()] * 2    # before start: the process
    m.start()
    tids = [c["thread-id"] for c in m.query_cpus()]
    assert os.getpid() not in tids and len(set(tids)) == 2
    assert all(str(t) in os.listdir("/proc/self/task") for t in tids)
