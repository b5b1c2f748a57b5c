"""Clones (virt-clone's meaning) and offline snapshots, checked on the
disks themselves through kvmkit.block and with qemu-img check."""

from __future__ import annotations

import subprocess

import pytest

from kvmkit.block import create_image, open_image
from kvmkit.manager.errors import OperationFailed, OperationInvalid

from .helpers import tiny_xml

pytestmark = pytest.mark.kvm


def _disk(path, data: bytes = b"", fmt: str = "qcow2"):
    create_image(str(path), fmt, 8 << 20)
    if data:
        with open_image(str(path)) as img:
            img.pwrite(0, data)
    return str(path)


def _read(path: str, n: int = 16) -> bytes:
    with open_image(path, readonly=True) as img:
        return img.pread(0, n)


def _write(path: str, data: bytes) -> None:
    with open_image(path) as img:
        img.pwrite(0, data)


def _qemu_img_check(path: str) -> None:
    res = subprocess.run(["qemu-img", "check", path], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


NET_AND_VSOCK = ("<interface type='ethernet'><target dev='tapfixed'/></interface><interface type='ethernet'/>"
                 "<vsock model='virtio'><cid auto='no' address='7'/></vsock>")


def test_linked_clone_gets_a_new_identity_and_keeps_writes_apart(host, idle, tmp_path):
    root = _disk(tmp_path / "root.qcow2", b"original-data---")
    raw = _disk(tmp_path / "scratch.raw", b"raw-data--------", fmt="raw")
    iso = _disk(tmp_path / "tools.raw", fmt="raw")
    xml = tiny_xml("orig", idle, disks=(root, raw, iso), extra_devices=NET_AND_VSOCK)
    xml = xml.replace(f"<source file='{iso}'/><target dev='vdc' bus='virtio'/>",
                      f"<source file='{iso}'/><target dev='vdc' bus='virtio'/><readonly/>")
    orig = host.define(xml).definition
    new = host.clone("orig", "copy").definition
    assert new.uuid != orig.uuid and new.name == "copy"
    assert len(set(new.macs) | set(orig.macs)) == 4 and all(m.startswith("52:54:00:") for m in new.macs)
    assert new.interfaces[0].target is None                      # a fixed tap name would clash
    assert new.vsock.cid == 8
    vda, vdb, vdc = new.disks
    assert vda.source == str(tmp_path / "copy.qcow2") and vda.format == "qcow2"
    assert vdb.source == str(tmp_path / "copy-1.raw")            # raw: copied in full
    assert vdc.source == iso                                     # read-only: shared
    assert host.lookup("orig").definition.disks[0].source == root   # the original's definition is unchanged
    assert _read(vda.source) == _read(root) == b"original-data---"
    _write(root, b"orig-after-clone")
    _write(vda.source, b"copy-after-clone")
    _write(vdb.source, b"copy-raw-write--")
    assert _read(root) == b"orig-after-clone" and _read(vda.source) == b"copy-after-clone"
    assert _read(raw) == b"raw-data--------"
    for path in (root, vda.source):
        _qemu_img_check(path)
    host.start("orig")
    host.start("copy")                                           # both run at once
    assert {i.name for i in host.domains(inactive=False)} == {"orig", "copy"}


def test_full_clone_is_independent(host, idle, tmp_path):
    root = _disk(tmp_path / "root.qcow2", b"full-copy-source")
    host.define(tiny_xml("o", idle, disks=(root,)))
    (vda,) = host.clone("o", "f", full=True).definition.disks
    with open_image(vda.source, readonly=True) as img:
        assert img.backing_filename is None
    assert _read(vda.source) == b"full-copy-source"
    assert not list(tmp_path.glob("*.base-*"))


def test_clone_refusals(host, idle, tmp_path):
    root = _disk(tmp_path / "root.qcow2")
    host.define(tiny_xml("o", idle, disks=(root,)))
    host.define(tiny_xml("taken", idle))
    with pytest.raises(OperationFailed, match="domain 'taken' already exists"):
        host.clone("o", "taken")
    host.start("o")
    with pytest.raises(OperationInvalid, match="must be shut off"):
        host.clone("o", "n")
    host.destroy("o")
    host.snapshot_create("o", "s")
    with pytest.raises(OperationInvalid, match="use --full"):
        host.clone("o", "n")
    assert host.clone("o", "n", full=True).name == "n"


def test_snapshot_revert_restores_the_disks(host, idle, tmp_path):
    root = _disk(tmp_path / "root.qcow2", b"before-snapshot-")
    data = _disk(tmp_path / "data.qcow2", b"data-before-----")
    host.define(tiny_xml("s", idle, disks=(root, data)))
    host.snapshot_create("s", "clean", "before the change")
    _write(root, b"after-snapshot--")
    _write(data, b"data-after------")
    (snap,) = host.snapshots("s")
    assert (snap.name, snap.state, snap.description) == ("clean", "shutoff", "before the change")
    host.snapshot_revert("s", "clean")
    assert _read(root) == b"before-snapshot-" and _read(data) == b"data-before-----"
    with pytest.raises(OperationInvalid, match="already exists"):
        host.snapshot_create("s", "clean")
    with pytest.raises(OperationInvalid, match="cannot delete inactive domain with 1 snapshots"):
        host.undefine("s")
    host.snapshot_delete("s", "clean")
    assert host.snapshots("s") == []
    for path in (root, data):
        _qemu_img_check(path)
    host.undefine("s")


def test_snapshots_need_qcow2_disks(host, idle, tmp_path):
    host.define(tiny_xml("r", idle, disks=(_disk(tmp_path / "r.raw", fmt="raw"),)))
    with pytest.raises(OperationInvalid, match="needs qcow2, it is raw"):
        host.snapshot_create("r", "s")
    host.start("r")                                   # running: refused before the guest is paused
    with pytest.raises(OperationInvalid, match="needs qcow2, it is raw"):
        host.snapshot_create("r", "s")
    assert host.lookup("r").state == "running" and host.snapshots("r") == []


def test_auto_vsock_cid_is_decided_at_start(host, idle):
    host.define(tiny_xml("v", idle, extra_devices="<vsock model='virtio'><cid auto='yes'/></vsock>"))
    assert "<cid auto='yes'/>" in host.dumpxml("v")
    info = host.start("v")
    assert f"<cid auto='yes' address='{3 + info.id}'/>" in host.dumpxml("v")      # libvirt's live form
    assert "<cid auto='yes'/>" in host.dumpxml("v", inactive=True)
    assert (host.sd.run_dir("v") / "vsock.sock").exists()
