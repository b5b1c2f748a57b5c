"""Live migration between two machines in one process, with the memwriter
tiny guest rewriting 4 MiB continuously: the destination's RAM is exactly
the paused source's (every page the guest wrote arrived), the guest's own
checksums keep passing on the destination, and its counter never goes
back.  Every transport (unix, tcp, file, exec), the pre-copy passes,
max-bandwidth, cancel, and the events and query-migrate numbers QEMU has."""

from __future__ import annotations

import os
import time

import pytest

from kvmkit.vmm.api import RunState
from migration_helpers import CHECKSUM, PAGES, Destination, assert_pattern, assert_same_memory, count, wait_past

pytestmark = pytest.mark.kvm


def migrate(src, uri: str, dest: Destination, **params) -> dict:
    src.migration.set_parameters(**params)
    src.migration.start(uri)
    info = src.migration.wait(60)
    dest.join()
    return info


@pytest.fixture
def writer(tiny_guest, machine):
    def make(**kw):
        m = machine(tiny_guest("memwriter"), **kw)
        wait_past(m, 3)
        return m
    return make


def _check_arrival(src, dest: Destination, info: dict):
    assert info["status"] == "completed", info
    dest.join()
    assert dest.error is None
    a = dest.arrival
    try:
        assert src.state == RunState.POSTMIGRATE and a.running
        assert_same_memory(src, a.machine)
        g = assert_pattern(a.machine)
        assert g >= count(src)
        before = count(a.machine)
        assert before >= count(src)                 # never backwards
        a.machine.start()
        assert a.machine.state == RunState.RUNNING
        wait_past(a.machine, before + 20)           # runs on, its checksums passing (else it exits)
        a.machine.pause()
        assert a.machine.exit_reason is None
        assert a.machine.memory.read_u64(CHECKSUM) == count(a.machine) * PAGES
    finally:
        a.machine.close()


def test_live_migration_over_unix(writer, tmp_path):
    src = writer()
    events = []
    src.subscribe(lambda e: events.append((e.name, dict(e.data))))
    sock = str(tmp_path / "mig.sock")
    dest = Destination(f"unix:{sock}")
    info = migrate(src, f"unix:{sock}", dest, max_bandwidth=4 << 30, downtime_limit=300)
    _check_arrival(src, dest, info)
    statuses = [d["status"] for n, d in events if n == "MIGRATION"]
    assert statuses == ["setup", "active", "device", "completed"]
    ram_info = info["ram"]
    assert ram_info["total"] == 64 << 20 and ram_info["remaining"] == 0
    assert PAGES * 4096 <= ram_info["transferred"] < 32 << 20     # zero pages are not sent
    assert 0 <= info["downtime"] < 1000 and info["total-time"] >= info["downtime"]
    assert not os.path.exists(sock)


def test_live_migration_over_tcp_with_passes_and_bandwidth_cap(writer):
    """Capped at 64 MB/s with a 1 ms downtime limit, the 4 MiB the guest keeps
    rewriting never fits: pre-copy repeats up to its pass cap and then stops
    the guest anyway; every page still arrives."""
    from kvmkit.vmm.migration.source import MAX_PASSES
    src = writer()
    passes = []
    src.subscribe(lambda e: passes.append(e.data["pass"]) if e.name == "MIGRATION_PASS" else None)
    dest = Destination("tcp:127.0.0.1:0")
    t0 = time.monotonic()
    info = migrate(src, f"tcp:127.0.0.1:{dest.incoming.port}", dest, max_bandwidth=64 << 20, downtime_limit=1)
    took = time.monotonic() - t0
    _check_arrival(src, dest, info)
    assert passes == list(range(1, MAX_PASSES + 1))
    assert info["ram"]["dirty-sync-count"] == MAX_PASSES
    assert info["ram"]["dirty-pages-rate"] > 0
    sent = info["ram"]["transferred"]
    assert took >= 0.8 * sent / (64 << 20), f"{sent} bytes in {took:.2f} s: max-bandwidth ignored"


def test_file_and_exec_streams_and_cont_after_postmigrate(writer, tmp_path):
    src = writer()
    path = tmp_path / "vm.stream"
    src.migration.set_parameters(max_bandwidth=4 << 30)
    src.migration.start(f"file:{path}")
    assert src.migration.wait(60)["status"] == "completed"
    assert src.state == RunState.POSTMIGRATE
    saved = count(src)
    dest = Destination(f"exec:cat {path}")
    _check_arrival(src, dest, {"status": "completed"})
    dest = Destination(f"file:{path}")          # the same stream again: a file is reusable
    _check_arrival(src, dest, {"status": "completed"})
    src.resume()                                # QMP cont: the source runs on from postmigrate
    assert src.state == RunState.RUNNING
    wait_past(src, saved)
    src.migration.start(f"exec:cat > {tmp_path / 'again'}")
    assert src.migration.wait(60)["status"] == "completed"
    assert (tmp_path / "again").stat().st_size > PAGES * 4096


def test_cancel_leaves_the_source_running(writer, tmp_path):
    src = writer()
    sock = str(tmp_path / "mig.sock")
    dest = Destination(f"unix:{sock}")
    src.migration.set_parameters(max_bandwidth=1 << 20)            # 12 s for what is to send
    src.migration.start(f"unix:{sock}")
    deadline = time.monotonic() + 10
    while src.migration.query()["status"] != "active":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)
    src.migration.cancel()
    info = src.migration.wait(10)
    assert info["status"] == "cancelled"
    assert src.state == RunState.RUNNING
    wait_past(src, count(src))
    dest.join()
    assert dest.arrival is None and "ends early" in str(dest.error)
    # and a second migration after the cancel works
    dest = Destination(f"unix:{sock}")
    info = migrate(src, f"unix:{sock}", dest, max_bandwidth=4 << 30)
    _check_arrival(src, dest, info)


def test_two_vcpus_and_a_paused_source(tiny_guest, machine, tmp_path):
    """A paused source stays paused after a failed migration and arrives
    paused (the destination does not run what was not running)."""
    src = machine(tiny_guest("counter"), cpus=2)
    deadline = time.monotonic() + 10
    while count(src) == 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    src.pause()
    sock = str(tmp_path / "mig.sock")
    dest = Destination(f"unix:{sock}")
    info = migrate(src, f"unix:{sock}", dest, max_bandwidth=4 << 30)
    assert info["status"] == "completed"
    a = dest.arrival
    try:
        assert not a.running and len(a.machine.vcpus) == 2
        assert_same_memory(src, a.machine)
        a.machine.start()
        assert a.machine.state == RunState.PAUSED
        saved = count(a.machine)
        a.machine.resume()
        wait_past(a.machine, saved)
    finally:
        a.machine.close()


def test_the_disk_lock_moves_with_the_vm(tiny_guest, machine, tmp_path):
    """Shared storage, as QEMU's image locking has it: the destination opens
    the source's disk while the source still runs, takes its lock when the
    stream ends, and the source in postmigrate cannot run on it again."""
    from kvmkit.devices.virtio.config import DiskSpec, VirtioSpecs
    from kvmkit.errors import ConfigError
    from kvmkit.vmm.disklock import DiskLocks
    disk = tmp_path / "shared.raw"
    disk.write_bytes(bytes(1 << 20))
    src = machine(tiny_guest("counter"), virtio=VirtioSpecs(disks=(DiskSpec(str(disk), "raw"),)))
    wait_past(src, 3)
    with pytest.raises(ConfigError, match="in use by another running VM"):
        DiskLocks([str(disk)])                      # the running source holds it
    sock = str(tmp_path / "mig.sock")
    dest = Destination(f"unix:{sock}")
    info = migrate(src, f"unix:{sock}", dest, max_bandwidth=4 << 30)
    assert info["status"] == "completed", info
    assert dest.error is None, dest.error
    a = dest.arrival
    try:
        a.machine.start()
        with pytest.raises(ConfigError, match="in use by another running VM"):
            src.resume()                            # cont in postmigrate: the destination has the disk
        assert src.state == RunState.POSTMIGRATE
    finally:
        a.machine.close()
    src.resume()                                    # the destination is gone: the source may run again
    assert src.state == RunState.RUNNING
