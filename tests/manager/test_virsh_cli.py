"""``kvmkit virsh`` as a user types it: a subprocess per command, virsh's
output shapes, messages and exit statuses, and every bad input the issue
lists (each a clear error that leaves the state as it was)."""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from .helpers import tiny_xml

pytestmark = pytest.mark.kvm


@pytest.fixture
def defined(tmp_path, idle, virsh):
    """Domain 'c1' (the idle guest) defined through the CLI."""
    path = tmp_path / "c1.xml"
    path.write_text(tiny_xml("c1", idle, uuid="11111111-2222-4333-8444-555555555555"))
    virsh("define", str(path), check=True)
    return path


def test_list_layout_and_lifecycle_messages(defined, virsh):
    assert virsh("list").stdout == " Id   Name   State\n--------------------\n\n"
    assert virsh("list", "--all").stdout == " Id   Name   State\n-----------------------\n -    c1     shut off\n\n"
    assert virsh("start", "c1").stdout == "Domain 'c1' started\n\n"
    assert virsh("list").stdout == " Id   Name   State\n----------------------\n 1    c1     running\n\n"
    assert virsh("-q", "list", "--name").stdout == "c1\n"
    assert virsh("suspend", "1").stdout == "Domain 'c1' suspended\n\n"          # by id
    assert virsh("-q", "domstate", "--reason", "c1").stdout == "paused (user)\n"
    assert virsh("resume", "11111111-2222-4333-8444-555555555555").stdout == "Domain 'c1' resumed\n\n"
    assert virsh("-q", "domstate", "--reason", "c1").stdout == "running (unpaused)\n"
    assert virsh("reset", "c1").stdout == "Domain 'c1' was reset\n\n"
    assert virsh("destroy", "c1").stdout == "Domain 'c1' destroyed\n\n"
    assert virsh("-q", "domstate", "--reason", "c1").stdout == "shut off (destroyed)\n"
    assert virsh("start", "c1").returncode == 0
    assert virsh("-q", "domid", "c1").stdout == "2\n"                           # ids are not reused
    assert virsh("-q", "domname", "2").stdout == "c1\n"
    assert virsh("-q", "domuuid", "c1").stdout == "11111111-2222-4333-8444-555555555555\n"


def test_dominfo_has_virshs_fields(defined, virsh):
    out = virsh("-q", "dominfo", "c1").stdout
    labels = [line.split(":")[0] for line in out.splitlines()]
    assert labels == ["Id", "Name", "UUID", "OS Type", "State", "CPU(s)", "Max memory", "Used memory",
                      "Persistent", "Autostart", "Managed save", "Security model", "Security DOI"]
    assert "Id:             -\n" in out and "State:          shut off\n" in out
    assert "Max memory:     65536 KiB\n" in out and "Autostart:      disable\n" in out
    virsh("start", "c1", check=True)
    out = virsh("-q", "dominfo", "c1").stdout
    assert re.search(r"^CPU time:       \d+\.\ds$", out, re.M) and "State:          running\n" in out
    vc = virsh("-q", "vcpucount", "c1").stdout
    assert vc == "maximum      config         1\nmaximum      live           1\n" \
                 "current      config         1\ncurrent      live           1\n"


def test_unknown_domain_is_one_error_line_and_status_1(virsh):
    for args in (("dominfo", "nosuch"), ("start", "nosuch"), ("domstate", "42")):
        res = virsh(*args)
        assert res.returncode == 1 and res.stderr == f"error: failed to get domain '{args[1]}'\n"


def test_second_start_and_undefine_of_a_running_domain_are_refused(defined, virsh):
    virsh("start", "c1", check=True)
    res = virsh("start", "c1")
    assert res.returncode == 1
    assert res.stderr == ("error: Failed to start domain 'c1'\n"
                          "error: Requested operation is not valid: domain is already running\n")
    res = virsh("undefine", "c1")
    assert res.returncode == 1 and "cannot undefine a running domain" in res.stderr
    assert virsh("-q", "list", "--name").stdout == "c1\n"                   # still there, still running
    virsh("destroy", "c1", check=True)
    assert virsh("undefine", "c1").stdout == "Domain 'c1' has been undefined\n\n"
    assert virsh("-q", "list", "--all", "--name").stdout == ""


def test_duplicate_names_and_uuids(tmp_path, defined, idle, virsh):
    same_name = tmp_path / "n.xml"
    same_name.write_text(tiny_xml("c1", idle, uuid="99999999-2222-4333-8444-555555555555"))
    res = virsh("define", str(same_name))
    assert res.returncode == 1
    assert res.stderr == (f"error: Failed to define domain from {same_name}\nerror: operation failed: domain 'c1' "
                          "already exists with uuid 11111111-2222-4333-8444-555555555555\n")
    same_uuid = tmp_path / "u.xml"
    same_uuid.write_text(tiny_xml("c2", idle, uuid="11111111-2222-4333-8444-555555555555"))
    res = virsh("define", str(same_uuid))
    assert res.returncode == 1 and "domain 'c1' is already defined with uuid 11111111-" in res.stderr
    assert virsh("-q", "list", "--all", "--name").stdout == "c1\n"
    again = virsh("define", str(defined))                                    # same name and UUID: an update
    assert again.returncode == 0 and again.stdout == f"Domain 'c1' defined from {defined}\n\n"


def test_invalid_xml_and_missing_images(tmp_path, idle, virsh):
    bad = tmp_path / "bad.xml"
    bad.write_text("<domain type='kvm'>\n  <name>x</name>\n  <memory>1</memory>\n  <os>\n</domain>\n")
    res = virsh("define", str(bad))
    assert res.returncode == 1
    assert res.stderr == (f"error: Failed to define domain from {bad}\n"
                          f"error: XML error: {bad}:5: mismatched tag (line 5, column 3)\n")
    missing = tmp_path / "m.xml"
    missing.write_text(tiny_xml("m", idle, disks=(str(tmp_path / "nope.qcow2"),)))
    res = virsh("define", str(missing))
    assert res.returncode == 1
    assert f"Cannot access storage file '{tmp_path / 'nope.qcow2'}': No such file or directory" in res.stderr
    res = virsh("define", str(tmp_path / "absent.xml"))
    assert res.returncode == 1 and "No such file or directory" in res.stderr
    assert virsh("-q", "list", "--all", "--name").stdout == ""


def test_a_disk_removed_after_define_fails_the_start(tmp_path, idle, virsh):
    disk = tmp_path / "d.raw"
    disk.write_bytes(bytes(1 << 20))
    path = tmp_path / "d.xml"
    path.write_text(tiny_xml("d", idle, disks=(str(disk),)))
    virsh("define", str(path), check=True)
    disk.unlink()
    res = virsh("start", "d")
    assert res.returncode == 1 and "Cannot access storage file" in res.stderr
    assert virsh("-q", "domstate", "d").stdout == "shut off\n"


def test_a_libvirt_written_file_is_refused_with_the_list(virsh):
    from .helpers import DATA
    res = virsh("define", str(DATA / "libvirt-written.xml"))
    assert res.returncode == 1
    assert "error: unsupported configuration: kvmkit does not support os/boot, features/vmport, " in res.stderr
    assert "devices/graphics" in res.stderr and "devices/disk@device=cdrom" in res.stderr


def test_transient_domain_from_create(tmp_path, idle, virsh):
    path = tmp_path / "t.xml"
    path.write_text(tiny_xml("t", idle))
    assert virsh("create", str(path)).stdout == f"Domain 't' created from {path}\n\n"
    assert "Persistent:     no\n" in virsh("dominfo", "t").stdout
    assert virsh("autostart", "t").returncode == 1
    virsh("destroy", "t", check=True)
    assert virsh("-q", "list", "--all", "--name").stdout == ""               # gone once it stopped


def test_qemu_monitor_command_passes_qmp_through(defined, virsh):
    virsh("start", "c1", check=True)
    res = virsh("-q", "qemu-monitor-command", "c1", "--pretty", '{"execute": "query-name"}')
    assert json.loads(res.stdout) == {"return": {"name": "c1"}, "id": "libvirt-1"}
    assert res.stdout.startswith('{\n  "return": {\n    "name": "c1"\n  },')
    res = virsh("-q", "qemu-monitor-command", "c1", '{"execute": "nosuch"}')
    assert json.loads(res.stdout)["error"]["class"] == "CommandNotFound"
    assert virsh("-q", "qemu-monitor-command", "c1", "--hmp", "info", "status").stdout == "VM status: running\n"


def test_edit_validates_before_saving(defined, virsh, tmp_path):
    script = tmp_path / "ed.py"
    script.write_text(textwrap.dedent("""
        import os, sys, pathlib
        p = pathlib.Path(sys.argv[1])
        p.write_text(p.read_text().replace(os.environ["MARK"], os.environ["NEW"]))
    """))

    def editor(mark: str, new: str) -> dict:
        return {"EDITOR": f"python3 {script}", "MARK": mark, "NEW": new}
    res = virsh("edit", "c1", env_extra=editor("65536</memory>", "131072</memory>"))
    assert res.stdout == "Domain 'c1' XML configuration edited.\n\n"
    assert "131072 KiB" in virsh("dominfo", "c1").stdout
    res = virsh("edit", "c1", env_extra=editor("</devices>", "<graphics type='vnc'/></devices>"))
    assert res.returncode == 1 and "devices/graphics" in res.stderr
    assert "<graphics" not in virsh("dumpxml", "c1").stdout
    res = virsh("edit", "c1", env_extra=editor("nothing-to-replace", "x"))
    assert res.stdout == "Domain 'c1' XML configuration not changed.\n\n"


def test_autostart_and_setmem_config(defined, virsh):
    assert virsh("autostart", "c1").stdout == "Domain 'c1' marked as autostarted\n\n"
    assert "Autostart:      enable" in virsh("dominfo", "c1").stdout
    assert virsh("-q", "host-autostart").stdout == "Domain 'c1' started\n"
    virsh("destroy", "c1", check=True)
    assert virsh("autostart", "--disable", "c1").stdout == "Domain 'c1' unmarked as autostarted\n\n"
    assert virsh("setmem", "c1", "49152", "--config").returncode == 0
    assert "<currentMemory unit='KiB'>49152</currentMemory>" in virsh("dumpxml", "c1").stdout
    res = virsh("setmem", "c1", "1G", "--config")
    assert res.returncode == 1 and "cannot set memory higher than max memory" in res.stderr


def test_pools_and_volumes(tmp_path, virsh):
    target = tmp_path / "images"
    assert virsh("pool-define-as", "p", "dir", "--target", str(target)).stdout == "Pool p defined\n\n"
    res = virsh("pool-start", "p")
    assert res.returncode == 1
    assert res.stderr == f"error: Failed to start pool p\nerror: cannot open directory '{target}': No such file or directory\n"
    assert virsh("pool-build", "p").returncode == 0 and virsh("pool-start", "p").stdout == "Pool p started\n\n"
    assert virsh("pool-list").stdout == " Name   State    Autostart\n----------------------------\n p      active   no\n\n"
    assert virsh("vol-create-as", "p", "base.qcow2", "64M", "--format", "qcow2").stdout == "Vol base.qcow2 created\n\n"
    assert virsh("vol-create-as", "p", "top.qcow2", "--format", "qcow2", "--backing-vol", "base.qcow2",
                 "--backing-vol-format", "qcow2").returncode == 0
    info = virsh("-q", "vol-info", "top.qcow2", "--pool", "p").stdout
    assert info == "Name:           top.qcow2\nType:           file\nCapacity:       64.00 MiB\n" \
                   f"Allocation:     {info.splitlines()[3].split(':', 1)[1].strip()}\n"
    assert virsh("vol-resize", "base.qcow2", "128M", "--pool", "p").stdout == \
        "Size of volume 'base.qcow2' successfully changed to 128M\n\n"
    assert "Capacity:       128.00 MiB" in virsh("vol-info", str(target / "base.qcow2")).stdout   # by path
    assert virsh("vol-clone", "base.qcow2", "copy.qcow2", "--pool", "p").stdout == \
        "Vol copy.qcow2 cloned from base.qcow2\n\n"
    lines = virsh("-q", "vol-list", "p").stdout.splitlines()
    assert [line.split()[0] for line in lines[2:]] == ["base.qcow2", "copy.qcow2", "top.qcow2"]
    assert virsh("vol-download", "copy.qcow2", str(tmp_path / "dl"), "--pool", "p").returncode == 0
    assert (tmp_path / "dl").read_bytes() == (target / "copy.qcow2").read_bytes()
    assert virsh("vol-upload", "copy.qcow2", str(tmp_path / "dl"), "--pool", "p").returncode == 0
    assert virsh("vol-delete", "copy.qcow2", "--pool", "p").stdout == "Vol copy.qcow2 deleted\n\n"
    res = virsh("vol-info", "copy.qcow2", "--pool", "p")
    assert res.returncode == 1 and res.stderr == "error: failed to get vol 'copy.qcow2'\n"
    assert virsh("pool-info", "nosuch").stderr == "error: failed to get pool 'nosuch'\n"
