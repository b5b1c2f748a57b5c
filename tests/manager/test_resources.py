"""Resource tuning and memory backing of domains: <cputune>, <memtune>,
<memoryBacking> from XML to a running VMM's threads and cgroups, and the
virsh commands that read and change them (vcpupin, emulatorpin,
schedinfo, memtune, setmaxmem, domstats, nodeinfo, node-memory-tune)."""

from __future__ import annotations

import struct
import time

import pytest

from kvmkit.host import affinity
from kvmkit.host.cgroups import VmCgroup
from kvmkit.host.jail import isolation_setting
from kvmkit.host.jail_process import vmm_pid

from .helpers import tiny_xml

pytestmark = pytest.mark.kvm
CPUS = sorted(affinity.online_cpus())
LAST = CPUS[-1]


def tuned_xml(name, kernel, tuning: str, vcpus: int = 1, memory_mib: int = 64) -> str:
    x = tiny_xml(name, kernel, memory_mib=memory_mib).replace("<vcpu>1</vcpu>", f"<vcpu>{vcpus}</vcpu>{tuning}")
    return x


def _tids(host, name):
    info = host.lookup(name)
    rd = host._rd(name)
    return info.pid, host._vcpu_tids(rd, info.pid)


def _wait_tids(host, name, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return _tids(host, name)
        except Exception:
            assert time.monotonic() < deadline
            time.sleep(0.1)


def test_cputune_and_memtune_reach_the_vmm(host, tiny_guest, virsh):
    xml = tuned_xml("tun", tiny_guest("counter"), f"<cputune><vcpupin vcpu='0' cpuset='{LAST}'/>"
                    f"<emulatorpin cpuset='{CPUS[0]}'/><shares>512</shares><global_period>100000</global_period>"
                    "<global_quota>30000</global_quota></cputune><memtune><hard_limit unit='MiB'>512</hard_limit>"
                    "</memtune>")
    host.define(xml)
    host.start("tun")
    pid, (tid,) = _wait_tids(host, "tun")
    if isolation_setting("on") == "on":       # jailed, as the manager starts every VMM by default
        assert vmm_pid(pid) != pid
    assert affinity.get_affinity(tid) == {LAST}
    assert affinity.get_affinity(pid) == {CPUS[0]}
    cg = VmCgroup.of_process(pid)
    assert cg.get_shares() == 512 and cg.get_bandwidth("global") == (100_000, 30_000)
    assert cg.get_memory()["hard"] == 512 << 20

    out = virsh("vcpupin", "tun", check=True).stdout
    assert out.startswith(f" VCPU   CPU Affinity\n----------------------\n 0      {LAST}\n")
    assert virsh("emulatorpin", "tun", check=True).stdout.endswith(f"       *: {CPUS[0]}\n\n")
    sched = virsh("schedinfo", "tun", check=True).stdout
    assert "Scheduler      : posix\ncpu_shares     : 512\n" in sched and "global_quota   : 30000\n" in sched
    assert "hard_limit     : 524288\n" in virsh("memtune", "tun", check=True).stdout

    # live changes, read back from the host
    virsh("vcpupin", "tun", "0", str(CPUS[0]), check=True)
    assert affinity.get_affinity(tid) == {CPUS[0]}
    virsh("schedinfo", "tun", "--set", "global_quota=20000", "--set", "cpu_shares=300", check=True)
    assert cg.get_bandwidth("global") == (100_000, 20_000) and cg.get_shares() == 300
    virsh("memtune", "tun", "--hard-limit", "400000", check=True)
    assert cg.get_memory()["hard"] == 400000 << 10
    live = virsh("dumpxml", "tun", check=True).stdout
    assert f"<vcpupin vcpu='0' cpuset='{CPUS[0]}'/>" in live and "<global_quota>20000</global_quota>" in live
    assert "<hard_limit unit='KiB'>400000</hard_limit>" in live
    assert "<global_quota>30000</global_quota>" in virsh("dumpxml", "--inactive", "tun", check=True).stdout

    host.destroy("tun")
    assert VmCgroup.of_process(pid) is None
    from tests.host.helpers import kvmkit_cgroups
    time.sleep(0.2)
    assert kvmkit_cgroups(pid) == []


def test_schedinfo_on_a_domain_started_without_tuning(host, tiny_guest, virsh):
    """The manager makes the cgroup tree for a running VMM that had none,
    and the VMM removes it when it ends."""
    host.define(tiny_xml("plain", tiny_guest("counter")))
    host.start("plain")
    pid, (tid,) = _wait_tids(host, "plain")
    assert VmCgroup.of_process(pid) is None
    virsh("schedinfo", "plain", "--set", "vcpu_quota=20000", check=True)
    cg = VmCgroup.of_process(pid)
    assert cg.get_bandwidth("vcpu") == (100_000, 20_000)
    assert str(tid) in (next(d for d in cg.dirs if "cpu/" in str(d)) / "vcpu0" / "tasks").read_text().split()
    time.sleep(0.3)
    vmm = vmm_pid(pid)                        # jailed: pid is the supervisor's
    a, t0 = affinity.thread_cpu_time(vmm, tid), time.monotonic()
    time.sleep(3)
    share = (affinity.thread_cpu_time(vmm, tid) - a) / (time.monotonic() - t0)
    assert share < 0.25, share
    host.destroy("plain")
    from tests.host.helpers import kvmkit_cgroups
    deadline = time.monotonic() + 5
    while kvmkit_cgroups(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert kvmkit_cgroups(pid) == []          # SIGTERM: the VMM removed the tree on its way out


def test_file_backed_shared_memory_domain(host, tiny_guest, virsh):
    host.define(tuned_xml("shm", tiny_guest("counter"), "<memoryBacking><nosharepages/><source type='file'/>"
                          "<access mode='shared'/><allocation mode='immediate'/></memoryBacking>"))
    host.start("shm")
    _wait_tids(host, "shm")
    ram = host._rd("shm").path / "guest-ram"
    assert ram.stat().st_size == 64 << 20
    with open(ram, "rb") as f:
        import os
        first = struct.unpack("<Q", os.pread(f.fileno(), 8, 0x5000))[0]
        time.sleep(0.3)
        assert struct.unpack("<Q", os.pread(f.fileno(), 8, 0x5000))[0] > first
    stats = dict(line.strip().split("=", 1) for line in virsh("domstats", "shm", check=True).stdout.splitlines()[1:]
                 if "=" in line)
    assert int(stats["balloon.rss"]) > 64 << 10            # preallocated
    assert stats["kvmkit.ksm.merging_pages"] == "0"


def test_domstats_fields(host, tiny_guest, virsh, tmp_path):
    disk = tmp_path / "d.raw"
    disk.write_bytes(bytes(1 << 20))
    host.define(tiny_xml("st", tiny_guest("counter"), disks=(str(disk),)))
    host.start("st")
    _wait_tids(host, "st")
    time.sleep(0.5)
    out = virsh("domstats", "st", check=True).stdout
    assert out.startswith("Domain: 'st'\n  state.state=1\n  state.reason=1\n")
    stats = dict(line.strip().split("=", 1) for line in out.splitlines()[1:] if "=" in line)
    assert int(stats["cpu.time"]) > 1e8
    assert int(stats["balloon.maximum"]) == 65536 and int(stats["balloon.rss"]) > 0
    assert stats["vcpu.current"] == "1" and int(stats["vcpu.0.time"]) > 0
    assert stats["block.count"] == "1" and stats["block.0.name"] == "vda" and stats["block.0.path"] == str(disk)
    assert stats["block.0.capacity"] == str(1 << 20) and "block.0.rd.bytes" in stats
    assert stats["net.count"] == "0"
    assert "kvmkit.ksm.host.pages_sharing" in stats
    only = virsh("domstats", "--cpu-total", "st", check=True).stdout
    assert [ln.split("=")[0].strip() for ln in only.splitlines()[1:] if ln] == ["cpu.time", "cpu.user", "cpu.system"]


def test_nodeinfo_and_node_memory_tune(virsh):
    out = virsh("nodeinfo", check=True).stdout
    assert f"CPU(s):              {len(CPUS)}\n" in out and "KSM pages sharing:" in out
    out = virsh("node-memory-tune", check=True).stdout
    assert out.startswith("Shared memory:\n\tshm_pages_to_scan") and "shm_pages_sharing" in out


def test_setmaxmem(host, tiny_guest, virsh):
    host.define(tiny_xml("mx", tiny_guest("idle")))
    virsh("setmaxmem", "mx", "131072", check=True)
    assert host.lookup("mx").definition.memory == 128 << 20
    host.start("mx")
    r = virsh("setmaxmem", "mx", "262144")
    assert r.returncode == 1 and "cannot resize the maximum memory on an active domain" in r.stderr
    virsh("setmaxmem", "mx", "98304", "--config", check=True)
    assert host.store.load("mx").memory == 96 << 20


BAD = [
    ("<cputune><vcpupin vcpu='1' cpuset='0'/></cputune>", "vcpupin vcpu '1': the domain has 1 vCPUs"),
    ("<cputune><vcpupin vcpu='0' cpuset='0-x'/></cputune>", "is not a CPU number or range"),
    ("<memtune><hard_limit unit='MiB'>32</hard_limit></memtune>", "hard_limit 32768 KiB is below"),
    ("<cputune><shares>lots</shares></cputune>", "is not a whole number"),
]


@pytest.mark.parametrize("tuning,message", BAD)
def test_bad_tuning_refused_at_define(host, tiny_guest, virsh, tmp_path, tuning, message):
    f = tmp_path / "d.xml"
    f.write_text(tuned_xml("bad", tiny_guest("idle"), tuning))
    r = virsh("define", str(f))
    assert r.returncode == 1 and message in r.stderr, r.stderr


def test_pinning_to_a_missing_cpu_fails_the_start_cleanly(host, tiny_guest, virsh):
    missing = LAST + 1
    host.define(tuned_xml("nocpu", tiny_guest("idle"), f"<cputune><vcpupin vcpu='0' cpuset='{missing}'/></cputune>"))
    r = virsh("start", "nocpu")
    assert r.returncode == 1 and f"this host has no CPU {missing}" in r.stderr, r.stderr
    assert host.lookup("nocpu").state == "shut off"
    r = virsh("vcpupin", "nocpu", "0", str(missing), "--config")
    assert r.returncode == 1 and f"no CPU {missing}" in r.stderr


def test_live_bad_values_change_nothing(host, tiny_guest, virsh):
    host.define(tiny_xml("lb", tiny_guest("idle")))
    host.start("lb")
    pid, (tid,) = _wait_tids(host, "lb")
    before = affinity.get_affinity(tid)
    r = virsh("vcpupin", "lb", "0", str(LAST + 1))
    assert r.returncode == 1 and "no CPU" in r.stderr and affinity.get_affinity(tid) == before
    r = virsh("memtune", "lb", "--hard-limit", "1024")
    assert r.returncode == 1 and "below the domain's memory" in r.stderr
    r = virsh("schedinfo", "lb", "--set", "vcpu_period=10")
    assert r.returncode == 1 and "period 10" in r.stderr
    r = virsh("schedinfo", "lb", "--set", "nonsense=1")
    assert r.returncode == 1 and "invalid scheduler parameter 'nonsense'" in r.stderr
    assert VmCgroup.of_process(pid) is None           # nothing was made for the refused values


FULL_TUNING = ("<cputune><vcpupin vcpu='0' cpuset='1'/><vcpupin vcpu='1' cpuset='0-1,^0'/><emulatorpin cpuset='0'/>"
               "<shares>2048</shares><period>100000</period><quota>-1</quota><global_period>50000</global_period>"
               "<global_quota>25000</global_quota><emulator_period>100000</emulator_period>"
               "<emulator_quota>30000</emulator_quota><vcpusched vcpus='1' scheduler='fifo' priority='4'/>"
               "</cputune><memtune><hard_limit unit='GiB'>1</hard_limit><soft_limit unit='MiB'>512</soft_limit>"
               "</memtune><memoryBacking><hugepages/><nosharepages/><source type='memfd'/><access mode='shared'/>"
               "<allocation mode='immediate'/></memoryBacking>")


def test_tuning_round_trips_and_validates(tiny_guest, tmp_path):
    import subprocess
    from kvmkit.manager.domain_parse import parse_domain
    from kvmkit.manager.domain_xml import domain_xml
    from kvmkit.manager.launch import tuning_args
    xml = tuned_xml("rt", tiny_guest("idle"), FULL_TUNING, vcpus=2).replace("<vcpu>2</vcpu>",
                                                                           "<vcpu cpuset='0-1'>2</vcpu>")
    d = parse_domain(xml)
    out = domain_xml(d)
    assert parse_domain(out) == d
    f = tmp_path / "rt.xml"
    f.write_text(out)
    r = subprocess.run(["virt-xml-validate", str(f), "domain"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + out
    assert tuning_args(d.tuning) == [
        "--cpu-affinity", "0-1", "--vcpu-pin", "0:1", "--vcpu-pin", "1:0-1,^0", "--emulator-pin", "0",
        "--cpu-shares", "2048", "--vcpu-quota=-1/100000", "--cpu-quota=25000/50000",
        "--emulator-quota=30000/100000", "--vcpu-sched", "1:fifo:4", "--memory-limit", "1048576K",
        "--memory-soft-limit", "524288K", "--ksm", "off", "--hugepages", "--mem-shared", "--mem-prealloc"]
