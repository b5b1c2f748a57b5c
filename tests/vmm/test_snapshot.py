"""Snapshot and restore with tiny guests: a counting guest restored in a new
machine continues from the saved count (its registers, RAM and run state
came across), restores are independent copy-on-write clones unless
shared=on, and damaged or foreign snapshot directories are refused."""

from __future__ import annotations

import json
import time

import pytest

from kvmkit.vmm.api import RunState
from kvmkit.vmm.machine import Machine
from kvmkit.vmm.snapshot import MEMORY_FILE, STATE_FILE, Snapshot, SnapshotError

pytestmark = pytest.mark.kvm
COUNTER = 0x5000


def _count(m) -> int:
    return m.memory.read_u64(COUNTER)


def _wait_past(m, value: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _count(m) <= value:
        assert time.monotonic() < deadline, f"counter stuck at {_count(m)}"
        time.sleep(0.02)


def test_restore_continues_from_the_saved_state(tiny_guest, machine, tmp_path):
    m = machine(tiny_guest("counter"), cpus=2)
    _wait_past(m, 0)
    m.pause()
    saved = _count(m)
    regs = m.cpu_registers(0)
    info = m.save_snapshot(tmp_path / "s")
    assert m.state == RunState.PAUSED and _count(m) == saved      # a paused VM stays paused
    assert info.memory_bytes == 64 << 20 and info.written_bytes < info.memory_bytes
    m.resume()
    _wait_past(m, saved)
    r = Machine.restore(tmp_path / "s", start_paused=True)
    try:
        r.start()
        assert _count(r) == saved
        got = r.cpu_registers(0)
        for name in ("rip", "rsp", "cr3", "efer", "cs", "rflags"):
            assert got[name] == regs[name], name
        assert len(r.vcpus) == 2
        r.resume()
        _wait_past(r, saved)
    finally:
        r.close()


def test_restores_are_copy_on_write_clones_unless_shared(tiny_guest, machine, tmp_path):
    m = machine(tiny_guest("counter"))
    _wait_past(m, 0)
    m.save_snapshot(tmp_path / "s")        # running: pauses for the copy and continues
    assert m.state == RunState.RUNNING
    before = (tmp_path / "s" / MEMORY_FILE).read_bytes()[COUNTER:COUNTER + 8]
    a, b = Machine.restore(tmp_path / "s"), Machine.restore(tmp_path / "s")
    try:
        a.start(), b.start()
        _wait_past(a, int.from_bytes(before, "little") + 1000)
        _wait_past(b, int.from_bytes(before, "little") + 1000)
    finally:
        a.close(), b.close()
    assert (tmp_path / "s" / MEMORY_FILE).read_bytes()[COUNTER:COUNTER + 8] == before
    c = Machine.restore(tmp_path / "s", shared_memory=True)
    try:
        c.start()
        _wait_past(c, int.from_bytes(before, "little") + 1000)
        c.pause()
        now = _count(c)
    finally:
        c.close()
    assert int.from_bytes((tmp_path / "s" / MEMORY_FILE).read_bytes()[COUNTER:COUNTER + 8], "little") == now


def test_damaged_and_foreign_snapshots_are_refused(tiny_guest, machine, tmp_path):
    with pytest.raises(SnapshotError, match="no such directory"):
        Snapshot.open(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SnapshotError, match="no vmstate"):
        Snapshot.open(tmp_path / "empty")
    m = machine(tiny_guest("counter"))
    _wait_past(m, 0)
    m.save_snapshot(tmp_path / "s")
    state = tmp_path / "s" / STATE_FILE
    good = state.read_bytes()
    state.write_bytes(good.replace(b'"cpus":1', b'"cpus":9'))
    with pytest.raises(SnapshotError, match="checksum"):
        Snapshot.open(tmp_path / "s")
    head, _, body = good.partition(b"\n")
    h = json.loads(head)
    h["version"] = 999
    state.write_bytes(json.dumps(h).encode() + b"\n" + body)
    with pytest.raises(SnapshotError, match="version 999"):
        Snapshot.open(tmp_path / "s")
    state.write_bytes(good)
    with open(tmp_path / "s" / MEMORY_FILE, "r+b") as f:
        f.truncate(4096)
    with pytest.raises(SnapshotError, match="memory file"):
        Snapshot.open(tmp_path / "s")


def test_a_nic_handed_over_by_descriptor_is_recorded_by_its_tap_name(tiny_guest):
    """A jailed VMM's NICs are ``fd=N`` (opened by its supervisor); the
    state must name the tap, since N means nothing to the restoring process."""
    from kvmkit.devices.virtio.config import NetSpec, VirtioSpecs
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.snapshot import config_from_record, config_record
    cfg = VmConfig.build(tiny_guest("hello"), memory="64M",
                         virtio=VirtioSpecs(nets=(NetSpec(fd=7, mac="52:54:00:00:00:01"), NetSpec("t1"))))
    rec = config_record(cfg, ["kvmtap3", "t1"])
    assert [(n["tap"], n["fd"]) for n in rec["virtio"]["nets"]] == [("kvmtap3", None), ("t1", None)]
    back = config_from_record(json.loads(json.dumps(rec)), "off")
    assert back.virtio.nets[0] == NetSpec("kvmtap3", "52:54:00:00:00:01")
