"""Bad resource and memory settings: one line naming the problem, exit
status 1, no traceback, and nothing half set up (no cgroup left behind)."""

from __future__ import annotations

import subprocess
import time

import pytest

from kvmkit.errors import HostResourceError
from kvmkit.host import affinity
from kvmkit.host.cgroups import CgroupHost, VmCgroup, discover

from .helpers import kvmkit_cgroups, run_vmm

pytestmark = pytest.mark.kvm
MISSING_CPU = max(affinity.online_cpus()) + 1

CASES = [
    (["--vcpu-pin", f"0:{MISSING_CPU}"], f"this host has no CPU {MISSING_CPU}"),
    (["--vcpu-pin", "3:0"], "names vCPU 3: the VM has 1"),
    (["--vcpu-pin", "0"], "expected VCPU:CPULIST"),
    (["--cpu-affinity", "1-0"], "runs backwards"),
    (["--emulator-pin", f"0,{MISSING_CPU}"], f"no CPU {MISSING_CPU}"),
    (["--memory-limit", "48M"], "memory hard limit 48M is below the guest's 64M"),
    (["--cpu-quota", "fast"], "--cpu-quota 'fast': expected a percentage"),
    (["--cpu-quota", "5000/100"], "period 100 µs must be from 1000"),
    (["--vcpu-quota", "10"], "quota 10 µs must be at least 1000"),
    (["--cpu-shares", "1"], "cpu shares 1 must be from 2"),
    (["--vcpu-sched", "0:fifo:0"], "fifo priority 0 must be from 1 to 99"),
    (["--vcpu-sched", "0:deadline:5"], "scheduler 'deadline'"),
    (["--mem-path", "/nonexistent-kvmkit"], "no such directory"),
    (["--mem-path", "/tmp"], "not a hugetlbfs mount"),
    (["--mem-file", "/nonexistent-kvmkit/ram"], "guest memory file /nonexistent-kvmkit/ram: No such file"),
    (["--mem-file", "/tmp/x,share=maybe"], "unknown option 'share=maybe'"),
    (["--mem-file", "/tmp/x", "--hugepages"], "cannot be given together"),
]


@pytest.mark.parametrize("args,message", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_setting_is_one_clear_line(tiny_guest, args, message):
    before = set(kvmkit_cgroups())
    r = run_vmm(tiny_guest("counter"), *args)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("kvmkit run: error: ") and message in last, r.stderr
    assert set(kvmkit_cgroups()) <= before


def test_a_failure_after_the_cgroups_were_made_removes_them(tiny_guest):
    """The memory backing fails after the cgroup tree exists: it must go."""
    before = set(kvmkit_cgroups())
    r = run_vmm(tiny_guest("counter"), "--cpu-quota", "30%", "--memory-limit", "1G", "--mem-path", "/tmp")
    assert r.returncode == 1 and "not a hugetlbfs mount" in r.stderr
    assert set(kvmkit_cgroups()) <= before


def _v2_only() -> CgroupHost:
    host = discover()
    return CgroupHost(tuple(h for h in host.hierarchies if h.version == 2))


def test_absent_controller_is_refused_and_nothing_is_made():
    """This host's v2 hierarchy offers no cpu or memory controller (they are
    on v1): asking it for them fails with the host's layout and leaves nothing."""
    host = _v2_only()
    assert host.hierarchies, "the host has no cgroup v2 mount"
    for ctl in ("cpu", "memory"):
        with pytest.raises(HostResourceError, match=f"cgroup '{ctl}' controller, which this host does not offer"):
            VmCgroup.create("absent", 1, {ctl}, pid=1 << 22, host=host)
    assert [p for p in host.hierarchies[0].base.iterdir() if p.name.startswith("kvmkit-")] == []


def test_v2_tree_accounts_a_real_process():
    """The v2 code path on the real unified mount: a group made, a process
    moved in, its CPU time read from cpu.stat, the group removed."""
    host = _v2_only()
    busy = subprocess.Popen(["python3", "-c", "import time\nt=time.time()\nwhile time.time()-t<30: pass"])
    try:
        cg = VmCgroup.create("v2", 1, set(), pid=busy.pid, host=host)
        try:
            vm, = cg.dirs
            assert vm.parent == host.hierarchies[0].base
            assert str(busy.pid) in (vm / "cgroup.procs").read_text().split()
            time.sleep(1.0)
            used = cg.cpu_usage()["time"]
            assert used > 0.1e9, used
            found = VmCgroup.of_process(busy.pid)
            assert found is not None and vm in found.dirs
        finally:
            cg.remove(busy.pid)
        assert not vm.exists()
        assert f"0::{host.hierarchies[0].current}" in open(f"/proc/{busy.pid}/cgroup").read()
    finally:
        busy.kill()
        busy.wait()
