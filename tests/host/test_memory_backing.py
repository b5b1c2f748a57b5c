"""Guest RAM backings against the real host: huge pages (MAP_HUGETLB and a
hugetlbfs mount), file-backed RAM shared with the host, shared anonymous
RAM, preallocation, and KSM merging across identical VMs."""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from kvmkit.errors import HostResourceError
from kvmkit.host import hugepages, ksm
from kvmkit.memory.backing import MemoryBacking

from .helpers import Vmm, kvmkit_cgroups, run_vmm

pytestmark = pytest.mark.kvm
HUGE = hugepages.default_size()


def _counting(m, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while m.memory.read_u64(0x5000) == 0:
        assert time.monotonic() < deadline, "the counter guest never counted"
        time.sleep(0.05)
    return m.memory.read_u64(0x5000)


def _mapping_of(m) -> dict[str, str]:
    """This process's /proc/self/smaps record of guest RAM's first region."""
    import ctypes
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m.memory.regions[0].mapping))
    record, inside = {}, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if "-" in head[0] and ":" not in head[0]:
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            inside = lo <= addr < hi
            if inside:
                record["maps"] = line
        elif inside:
            record[head[0].rstrip(":")] = " ".join(head[1:])
    return record


def test_file_backed_shared_ram_is_the_host_file(tiny_guest, machine, tmp_path):
    path = tmp_path / "guest-ram"
    m = machine(tiny_guest("counter"), memory_backing=MemoryBacking("file", str(path), shared=True))
    assert path.stat().st_size == 64 << 20
    first = _counting(m)
    fd = os.open(path, os.O_RDONLY)            # another view of the same pages: the host file
    try:
        seen = struct.unpack("<Q", os.pread(fd, 8, 0x5000))[0]
        time.sleep(0.2)
        later = struct.unpack("<Q", os.pread(fd, 8, 0x5000))[0]
    finally:
        os.close(fd)
    assert first <= seen < later               # the guest's counter, live, through the file
    # the guest's kernel image is in the file where the guest has it
    assert open(path, "rb").read()[0x100000:0x100004] == m.memory.read(0x100000, 4)


def test_file_backed_private_ram_leaves_the_file_alone(tiny_guest, machine, tmp_path):
    path = tmp_path / "guest-ram"
    path.write_bytes(b"\xab" * 4096)
    m = machine(tiny_guest("counter"), memory_backing=MemoryBacking("file", str(path)))
    _counting(m)
    data = path.read_bytes()
    assert len(data) == 64 << 20 and data[:4096] == b"\xab" * 4096 and data[0x5000:0x5008] == bytes(8)


def test_shared_anonymous_ram_is_a_memfd(tiny_guest, machine):
    m = machine(tiny_guest("counter"), memory_backing=MemoryBacking(shared=True))
    _counting(m)
    rec = _mapping_of(m)
    assert "memfd:kvmkit-ram" in rec["maps"] and rec["maps"].split()[1].endswith("s")


def test_hugepage_backed_ram(tiny_guest, machine):
    need = (64 << 20) // HUGE
    with hugepages.reserved(need + 4) as total:
        assert total >= need, "the kernel could not reserve huge pages"
        before = hugepages.pools()[HUGE].available
        m = machine(tiny_guest("counter"), memory_backing=MemoryBacking("hugepages"))
        assert hugepages.pools()[HUGE].available == before - need
        _counting(m)
        assert _mapping_of(m)["KernelPageSize"] == f"{HUGE >> 10} kB"
        m.close()
        m.memory.close()          # give the huge pages back before the reservation ends


def test_hugetlbfs_mem_path(tiny_guest, machine):
    need = (64 << 20) // HUGE
    mnt = tempfile.mkdtemp(prefix=f"kvmkit-huge-{os.getpid()}-")
    subprocess.run(["mount", "-t", "hugetlbfs", "none", mnt], check=True)
    try:
        with hugepages.reserved(need + 2):
            m = machine(tiny_guest("counter"), memory_backing=MemoryBacking("hugepages", mnt))
            _counting(m)
            assert _mapping_of(m)["KernelPageSize"] == f"{HUGE >> 10} kB"
            assert os.listdir(mnt) == []          # an unlinked file: nobody else can open it
            m.close()
            m.memory.close()
    finally:
        subprocess.run(["umount", mnt], check=True)
        os.rmdir(mnt)


def test_no_hugepages_reserved_is_a_clear_error(tiny_guest):
    avail = hugepages.pools()[HUGE].available
    memory = max(64 << 20, (avail + 1) * HUGE)
    before = set(kvmkit_cgroups())
    r = run_vmm(tiny_guest("counter"), "--hugepages", "--cpu-quota", "50%", memory=f"{memory >> 20}M")
    assert r.returncode == 1
    line = r.stderr.strip().splitlines()[-1]
    assert "huge pages of 2048 KiB" in line and f"the host has {avail} free" in line, r.stderr
    assert "Traceback" not in r.stderr
    assert set(kvmkit_cgroups()) <= before          # the cgroup made for --cpu-quota went with the failure
    with pytest.raises(HostResourceError, match="needs"):
        MemoryBacking("hugepages").map([(0, memory)])


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("prealloc", [True, False])
def test_prealloc_faults_all_ram_in(tiny_guest, prealloc):
    args = ["--mem-prealloc"] if prealloc else []
    with Vmm(tiny_guest("idle"), *args, memory="96M") as vm:
        vm.vcpu_tids()
        rss = _rss_kib(vm.pid)
        if prealloc:
            assert rss > 96 << 10
        else:
            assert rss < 90 << 10


def _merging(pid: int) -> int:
    return ksm.process_figures(pid).get("ksm_merging_pages", 0)


@pytest.mark.parametrize("on", [True, False])
def test_ksm_merges_identical_guests_only_when_on(tiny_guest, on):
    vms = [Vmm(tiny_guest("ksm"), "--ksm", "on" if on else "off") for _ in range(3)]
    try:
        for v in vms:
            v.wait_ready()
            v.vcpu_tids()
        with ksm.tuned(run=1, pages_to_scan=20000, sleep_millisecs=10):
            deadline = time.monotonic() + (30 if on else 6)
            while time.monotonic() < deadline:
                merged = [_merging(v.pid) for v in vms]
                if on and all(n >= 1000 for n in merged):
                    break
                time.sleep(0.25)
            figures = ksm.host_figures()
            merged = [_merging(v.pid) for v in vms]        # the same moment as the host's figures
            host = figures["pages_sharing"] + figures["pages_shared"]
        if on:
            assert all(n >= 1000 for n in merged), merged   # the 4 MiB pattern: 1024 pages each
            # every page mapped to a KSM page is counted once by the host: pages_shared (the KSM
            # pages themselves) + pages_sharing (the further mappings).  That holds ours and other
            # VMs' on this shared machine, which come and go: it is at least ours, whatever theirs
            # did meanwhile (a few pages may be unmerged by the guests between the two reads)
            assert host >= sum(merged) - 16, (figures, merged)
        else:
            assert merged == [0, 0, 0]
    finally:
        for v in vms:
            v.stop()


@pytest.mark.parametrize("shared", [True, False])
def test_reset_clears_file_backed_ram(tiny_guest, machine, tmp_path, shared):
    path = tmp_path / "guest-ram"
    with open(path, "wb") as f:                      # a private mapping starts from the file's contents
        f.truncate(64 << 20)
        f.seek(0x800000)
        f.write(b"from file")
    m = machine(tiny_guest("counter"), memory_backing=MemoryBacking("file", str(path), shared=shared))
    _counting(m)
    assert m.memory.read(0x800000, 9) == b"from file"
    m.pause()
    m.memory.write(0x800000, b"left over")          # RAM the new boot does not load anything into
    m.reset()
    assert m.memory.read(0x800000, 9) == bytes(9)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.pread(fd, 9, 0x800000) == (bytes(9) if shared else b"from file")   # private: untouched
    finally:
        os.close(fd)
    m.resume()
    _counting(m)                                     # and the guest boots again
