"""Restore and instant clones with a tiny guest that counts in memory and
prints every count to its console: a restore continues the printed
sequence with no gap and no repeat, three clones of one snapshot run at
once as independent VMs (each its own linked-clone disk, tap, MAC and
vsock CID, the base image untouched), and a snapshot cannot be restored
twice onto the same writable disk."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest

import kvmkit
from kvmkit.devices.virtio.config import DiskSpec, NetSpec, VirtioSpecs, VsockSpec
from kvmkit.errors import ConfigError

pytestmark = pytest.mark.kvm
COUNTER = 0x5000


def _lines(out: bytes) -> list[int]:
    """The complete numbers printed (a trailing partial line is dropped)."""
    return [int(x) for x in out.split(b"\n")[:-1]]


def _assert_consecutive(values: list[int], first: int = 1) -> None:
    assert values, "nothing printed"
    bad = [(i, v) for i, v in enumerate(values) if v != first + i]
    assert not bad, f"sequence breaks at {bad[:3]} (of {len(values)} values from {first})"


def _wait_printed(m, n: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while m.debug_output.count(b"\n") < n:
        assert time.monotonic() < deadline, f"only {len(_lines(bytes(m.debug_output)))} lines printed"
        time.sleep(0.02)


def _snapshot(tiny_guest, machine, path, **kw):
    """Run the ticker a little, pause, save; returns what it printed so far."""
    m = machine(tiny_guest("ticker"), **kw)
    _wait_printed(m, 50)
    m.pause()
    printed = bytes(m.debug_output)
    m.save_snapshot(path)
    return m, printed


def test_restore_continues_the_sequence_without_gap_or_repeat(tiny_guest, machine, tmp_path):
    m, printed = _snapshot(tiny_guest, machine, tmp_path / "s")
    m.close()
    with kvmkit.VM.restore(tmp_path / "s") as r:
        _wait_printed(r, 200)
        r.pause()
        after = bytes(r.debug_output)
        count = r.memory.read_u64(COUNTER)
    values = _lines(printed + after)
    _assert_consecutive(values)
    assert values[-1] in (count, count - 1)       # the last complete line, or the one being printed


def test_three_clones_at_once_are_independent(tiny_guest, machine, tmp_path):
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "16M"], check=True)
    base_sum = hashlib.sha256(base.read_bytes()).hexdigest()
    specs = VirtioSpecs(disks=(DiskSpec(str(base), "qcow2"),), nets=(NetSpec(),),
                        vsock=VsockSpec(7, str(tmp_path / "v.sock")))
    m, printed = _snapshot(tiny_guest, machine, tmp_path / "s", virtio=specs)
    orig_mac = bytes(m.virtio_devices[1].mac)
    m.close()
    start = len(_lines(printed)) + 1 if printed.endswith(b"\n") else None
    clones = [kvmkit.VM.restore(tmp_path / "s", clone=True) for _ in range(3)]
    try:
        for c in clones:
            c.start()
        for c in clones:
            _wait_printed(c, 100)
        for c in clones:
            c.pause()
        outs = [bytes(c.debug_output) for c in clones]
        for out in outs:                           # each continues the snapshot's sequence on its own
            _assert_consecutive(_lines(printed + out))
        if start is not None:
            assert all(out.startswith(b"%d\n" % start) for out in outs)
        clones[0].resume()                         # one runs on, the others stand still
        before = [c.memory.read_u64(COUNTER) for c in clones]
        time.sleep(0.3)
        after = [c.memory.read_u64(COUNTER) for c in clones]
        assert after[0] > before[0] and after[1:] == before[1:]
        dirs = [c.clone_directory for c in clones]
        assert len(set(dirs)) == 3
        macs, cids, taps = set(), set(), set()
        for c, d in zip(clones, dirs):
            rec = json.loads((d / "clone.json").read_text())
            blk, net, vsock = c.virtio_devices
            info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", rec["disks"][0]["overlay"]],
                                             capture_output=True, text=True, check=True).stdout)
            assert info["format"] == "qcow2" and info["full-backing-filename"] == str(base.resolve())
            assert net.config_bytes()[:6] == net.mac != orig_mac      # what the guest's driver reads
            assert rec["nets"][0]["mac"] == ":".join(f"{b:02x}" for b in net.mac)
            assert vsock.cid == rec["vsock"]["cid"] != 7 and os.path.exists(rec["vsock"]["uds"])
            macs.add(net.mac), cids.add(vsock.cid), taps.add(net.tap.name)
        assert len(macs) == len(cids) == len(taps) == 3
    finally:
        for c in clones:
            c.close()
    assert hashlib.sha256(base.read_bytes()).hexdigest() == base_sum     # the base was only read
    plain = kvmkit.VM.restore(tmp_path / "s")     # a plain restore keeps the guest's MAC on its new tap
    try:
        assert plain.virtio_devices[1].mac == orig_mac
    finally:
        plain.close()


def test_a_writable_disk_is_restored_once_unless_cloned(tiny_guest, machine, tmp_path):
    disk = tmp_path / "d.raw"
    disk.write_bytes(bytes(1 << 20))
    specs = VirtioSpecs(disks=(DiskSpec(str(disk), "raw"),))
    m, _ = _snapshot(tiny_guest, machine, tmp_path / "s", virtio=specs)
    with pytest.raises(ConfigError, match=r"d\.raw is in use by another running VM.*--clone"):
        kvmkit.VM.restore(tmp_path / "s")          # the source still runs on it
    m.close()
    first = kvmkit.VM.restore(tmp_path / "s")
    try:
        with pytest.raises(ConfigError, match="in use by another running VM"):
            kvmkit.VM.restore(tmp_path / "s")
        kvmkit.VM.restore(tmp_path / "s", clone_dir=tmp_path / "c").close()    # a clone is fine
    finally:
        first.close()
    kvmkit.VM.restore(tmp_path / "s").close()     # free again once the first ended
    os.utime(disk)                                 # the base moved on: clones would not match it
    with pytest.raises(ConfigError, match="changed after the snapshot"):
        kvmkit.VM.restore(tmp_path / "s", clone=True)
    with pytest.raises(ConfigError, match="not empty"):
        kvmkit.VM.restore(tmp_path / "s", clone_dir=tmp_path / "c")


def _kvmkit(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kvmkit.cli.main", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_cli_clones_run_side_by_side(tiny_guest, machine, tmp_path):
    disk = tmp_path / "d.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8M"], check=True)
    m = machine(tiny_guest("hello"), cmdline="7", start_paused=True,
                virtio=VirtioSpecs(disks=(DiskSpec(str(disk), "qcow2"),)))
    m.save_snapshot(tmp_path / "s")
    m.close()
    procs = [_kvmkit("run", "--restore", str(tmp_path / "s"), "--clone", str(tmp_path / f"c{i}"),
                     "--serial", "null") for i in range(3)]
    for i, p in enumerate(procs):
        out, err = p.communicate(timeout=60)
        assert p.returncode == (7 << 1) | 1, err
        assert f"clone of {tmp_path / 's'} in {tmp_path / f'c{i}'}" in err
        assert (tmp_path / f"c{i}" / "disk0.qcow2").exists()
    bad = subprocess.run([sys.executable, "-m", "kvmkit.cli.main", "run", "--clone"], capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode == 1 and "--clone needs --restore" in bad.stderr and "Traceback" not in bad.stderr
