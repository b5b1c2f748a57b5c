"""qcow2 internal snapshots of a running VM's open disks, taken by its VMM:
QMP ``blockdev-snapshot-internal-sync`` / ``-delete-internal-sync`` (QEMU's
commands, from the qemu.qmp client) and ``kvmkit-savevm`` (the VM state
and every writable disk in one paused moment).  qemu-img is the judge of the images."""

from __future__ import annotations

import asyncio
import subprocess

import pytest
from qemu.qmp import ExecuteError, QMPClient

from kvmkit.block import create_image
from kvmkit.devices.virtio.config import VirtioSpecs, parse_disk
from kvmkit.errors import GuestError
from kvmkit.monitor.server import QmpServer

pytestmark = pytest.mark.kvm


def _snapshots(path) -> list[str]:
    out = subprocess.run(["qemu-img", "snapshot", "-U", "-l", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[1] for line in out.splitlines()[2:] if line.strip()]


def _specs(*disks: str) -> VirtioSpecs:
    return VirtioSpecs(disks=tuple(parse_disk(d) for d in disks))


def test_disk_snapshots_through_qmp_and_with_the_vm_state(tiny_guest, machine, tmp_path, sock_dir):
    disk = tmp_path / "d.qcow2"
    create_image(str(disk), "qcow2", 8 << 20)
    m = machine(tiny_guest("counter"), virtio=_specs(f"path={disk},format=qcow2"))
    async def scenario(path: str) -> None:
        qmp = QMPClient("disk-snapshots")
        await qmp.connect(path)
        info = await qmp.execute("kvmkit-savevm", {"path": str(tmp_path / "state"), "name": "with-state"})
        assert info["memory-bytes"] == 64 << 20 and (tmp_path / "state" / "memory").exists()
        assert _snapshots(disk) == ["with-state"]
        assert (await qmp.execute("query-status"))["status"] == "running"     # paused for it, went on
        assert await qmp.execute("blockdev-snapshot-internal-sync", {"device": "virtio0", "name": "q"}) == {}
        with pytest.raises(ExecuteError, match="already exists"):
            await qmp.execute("blockdev-snapshot-internal-sync", {"device": str(disk), "name": "q"})
        with pytest.raises(ExecuteError, match="no disk 'virtio7'"):
            await qmp.execute("blockdev-snapshot-internal-sync", {"device": "virtio7", "name": "x"})
        await qmp.execute("blockdev-snapshot-delete-internal-sync", {"device": "virtio0", "name": "with-state"})
        with pytest.raises(ExecuteError, match="no snapshot named"):
            await qmp.execute("blockdev-snapshot-delete-internal-sync", {"device": "virtio0", "name": "nosuch"})
        await qmp.disconnect()

    with QmpServer(m, f"unix:{sock_dir / 'qmp.sock'}") as server:
        asyncio.run(scenario(server.address.path))
    assert _snapshots(disk) == ["q"]
    m.close()
    res = subprocess.run(["qemu-img", "check", str(disk)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_a_writable_raw_disk_refuses_before_anything_is_written(tiny_guest, machine, tmp_path):
    raw, qcow = tmp_path / "d.raw", tmp_path / "d.qcow2"
    create_image(str(raw), "raw", 1 << 20)
    create_image(str(qcow), "qcow2", 8 << 20)
    m = machine(tiny_guest("counter"), virtio=_specs(f"path={qcow},format=qcow2", f"path={raw},format=raw"))
    with pytest.raises(GuestError, match="is raw: internal snapshots need qcow2"):
        m.savevm(tmp_path / "state", "s")
    assert not (tmp_path / "state").exists() and _snapshots(qcow) == []
    assert m.running
