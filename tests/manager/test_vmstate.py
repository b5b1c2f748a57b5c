"""A running domain's state through ``kvmkit virsh``, with the counter
tiny guest (it counts at guest-physical 0x5000 from zero at boot):
``save``/``restore`` continue the guest where it was, ``managedsave`` makes
the next ``start`` continue it, snapshots of running and paused domains
bring memory and disks back, and ``migrate`` moves it to another state
directory.  The count is read from a saved memory file; a paused guest
does not count, so a paused one saved, moved or restored must keep its
count exactly (a guest that booted again would count from zero)."""

from __future__ import annotations

import struct
import subprocess
import time
from pathlib import Path

import pytest

from kvmkit.block import create_image

from .helpers import tiny_xml

pytestmark = pytest.mark.kvm

COUNTER_AT = 0x5000          # the counter guest's counter (guest RAM starts at offset 0 of "memory")


def count(state: Path) -> int:
    with open(state / "memory", "rb") as f:
        f.seek(COUNTER_AT)
        return struct.unpack("<Q", f.read(8))[0]


@pytest.fixture
def counter(host, tiny_guest, tmp_path):
    """Domain 'c': the counter guest with a qcow2 disk, started and counting."""
    disk = tmp_path / "c.qcow2"
    create_image(str(disk), "qcow2", 8 << 20)
    host.define(tiny_xml("c", tiny_guest("counter"), disks=(str(disk),)))
    host.start("c")
    time.sleep(0.3)
    return disk


def qemu_img_clean(disk: Path) -> None:
    res = subprocess.run(["qemu-img", "check", str(disk)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def disk_snapshots(disk: Path) -> list[str]:
    out = subprocess.run(["qemu-img", "snapshot", "-U", "-l", str(disk)], capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[1] for line in out.splitlines()[2:] if line.strip()]


def test_save_then_restore_continues_where_it_was(counter, virsh, tmp_path):
    disk = counter
    saved = tmp_path / "c.save"
    assert virsh("save", "c", str(saved)).stdout == f"\nDomain 'c' saved to {saved}\n\n"
    assert virsh("-q", "domstate", "--reason", "c").stdout == "shut off (saved)\n"
    assert saved.is_dir() and (saved / "memory").is_file()          # a directory, as --help says
    at_save = count(saved)
    assert at_save > 0
    assert virsh("restore", str(saved)).stdout == f"Domain restored from {saved}\n\n"
    assert virsh("-q", "domstate", "--reason", "c").stdout == "running (restored)\n"
    time.sleep(0.3)
    virsh("suspend", "c", check=True)
    again = tmp_path / "c.again"
    virsh("save", "c", str(again), check=True)
    assert count(again) > at_save                           # it went on counting from the saved value
    virsh("restore", "--paused", str(again), check=True)    # restored paused: not one more count
    assert virsh("-q", "domstate", "c").stdout == "paused\n"
    third = tmp_path / "c.third"
    virsh("save", "c", str(third), check=True)
    assert count(third) == count(again)                     # the very state, not a new boot (0)
    qemu_img_clean(disk)


def test_managedsave_makes_start_continue(counter, virsh, host, tmp_path):
    disk = counter
    virsh("suspend", "c", check=True)                       # a paused guest: its count is exact
    assert virsh("managedsave", "c").stdout == "\nDomain 'c' state saved by libvirt\n\n"
    at_save = count(host.sd.managed_save("c"))
    assert "Managed save:   yes\n" in virsh("dominfo", "c").stdout
    assert virsh("-q", "list", "--all", "--managed-save").stdout.split("\n")[2].split() == ["-", "c", "saved"]
    assert virsh("-q", "list", "--all").stdout.split("\n")[2].split() == ["-", "c", "shut", "off"]
    assert virsh("-q", "list", "--all", "--with-managed-save", "--name").stdout == "c\n"
    assert virsh("-q", "list", "--all", "--without-managed-save", "--name").stdout == ""
    assert virsh("-q", "domstate", "--reason", "c").stdout == "shut off (saved)\n"
    res = virsh("undefine", "c")
    assert res.returncode == 1 and "Refusing to undefine while domain managed save image exists" in res.stderr
    virsh("start", "c", check=True)
    assert virsh("-q", "domstate", "--reason", "c").stdout == "paused (user)\n"     # saved paused, so paused
    assert "Managed save:   no\n" in virsh("dominfo", "c").stdout
    assert not host.sd.managed_save("c").exists()
    probe = tmp_path / "probe"
    virsh("save", "c", str(probe), check=True)
    assert count(probe) == at_save > 0
    virsh("restore", str(probe), check=True)
    virsh("managedsave", "c", check=True)
    assert virsh("-q", "managedsave-remove", "c").stdout == "Removed managedsave image for domain 'c'\n"
    assert virsh("-q", "managedsave-remove", "c").stdout == \
        "Domain 'c' has no manage save image; removal skipped\n"
    virsh("start", "--paused", "c", check=True)             # no managed save: it boots
    fresh = tmp_path / "fresh"
    virsh("save", "c", str(fresh), check=True)
    assert count(fresh) == 0                                # a new boot, paused before it counted
    virsh("restore", "--running", str(fresh), check=True)
    assert virsh("-q", "domstate", "--reason", "c").stdout == "running (restored)\n"
    qemu_img_clean(disk)


def test_snapshots_of_a_running_and_a_paused_domain(counter, virsh, host, tmp_path):
    disk = counter
    virsh("snapshot-create-as", "c", "running1", check=True)
    assert "running1" in disk_snapshots(disk)               # taken by the VMM, the disk still open
    assert virsh("-q", "domstate", "c").stdout == "running\n"   # the guest continues
    virsh("suspend", "c", check=True)
    virsh("snapshot-create-as", "c", "paused1", check=True)
    at_snapshot = count(host.sd.snapshot_dir("c") / "paused1.state")
    for snap in ("running1", "paused1"):                    # libvirt's domainsnapshot schema accepts them
        res = subprocess.run(["virt-xml-validate", str(host.sd.snapshot_dir("c") / f"{snap}.xml"),
                              "domainsnapshot"], capture_output=True, text=True)
        assert res.returncode == 0, res.stdout + res.stderr
    rows = [line.split() for line in virsh("-q", "snapshot-list", "c").stdout.splitlines()[2:]]
    assert [(r[0], r[-1]) for r in rows] == [("running1", "running"), ("paused1", "paused")]
    virsh("resume", "c", check=True)
    time.sleep(0.5)
    assert virsh("snapshot-revert", "c", "paused1").returncode == 0
    assert virsh("-q", "domstate", "--reason", "c").stdout == "paused (user)\n"
    probe = tmp_path / "probe"
    virsh("save", "c", str(probe), check=True)
    assert count(probe) == at_snapshot > 0                  # memory as it was at the snapshot
    virsh("restore", str(probe), check=True)
    virsh("snapshot-revert", "c", "running1", check=True)   # from shut off: it runs again
    assert virsh("-q", "domstate", "--reason", "c").stdout == "running (from snapshot)\n"
    assert virsh("-q", "snapshot-delete", "c", "running1").stdout == "Domain snapshot running1 deleted\n"
    assert disk_snapshots(disk) == ["paused1"]               # deleted by the running VMM
    assert not (host.sd.snapshot_dir("c") / "running1.state").exists()
    virsh("destroy", "c", check=True)
    virsh("snapshot-delete", "c", "paused1", check=True)     # shut off: deleted in the file
    assert disk_snapshots(disk) == []
    qemu_img_clean(disk)
    assert host.check().problems == []


def test_revert_of_a_running_domain_to_a_shut_off_snapshot_stops_it(host, tiny_guest, tmp_path, virsh):
    disk = tmp_path / "o.qcow2"
    create_image(str(disk), "qcow2", 8 << 20)
    host.define(tiny_xml("o", tiny_guest("idle"), disks=(str(disk),)))
    virsh("snapshot-create-as", "o", "off", check=True)
    virsh("start", "o", check=True)
    virsh("snapshot-revert", "o", "off", check=True)
    assert virsh("-q", "domstate", "--reason", "o").stdout == "shut off (from snapshot)\n"
    qemu_img_clean(disk)


def test_migrate_to_another_state_directory_and_back(counter, virsh, host, tmp_path):
    from kvmkit.manager import Host
    disk = counter
    other = tmp_path / "other-host"
    virsh("suspend", "c", check=True)                       # paused: the count must travel unchanged
    assert virsh("-q", "migrate", "--persistent", "--undefinesource", "c", f"kvmkit://{other}").stdout == ""
    there = Host(other)
    try:
        info = there.lookup("c")
        assert (info.state, info.persistent) == ("paused", True)
        assert virsh("-q", "list", "--all", "--name").stdout == ""          # undefined at the source
        probe = tmp_path / "probe"
        there.save("c", probe)
        at_destination = count(probe)
        assert at_destination > 0                           # the same guest, not a new boot
        there.restore(probe, running=True)
        assert there.lookup("c").reason == "restored"
        there.suspend("c")
        there.migrate("c", str(host.state_dir))             # and back, by plain path: transient here
        info = host.lookup("c")
        assert (info.state, info.persistent) == ("paused", False)
        back = there.lookup("c")
        assert (back.state, back.reason) == ("shut off", "migrated")        # still defined there
        assert not list(there.sd.sub("save").glob("*"))      # no staging state (live: none was made)
        virsh("resume", "c", check=True)
        assert virsh("-q", "domstate", "--reason", "c").stdout == "running (unpaused)\n"
        assert host.check().problems == [] and there.check().problems == []
        stray = there.sd.sub("save") / "c.migrating-999999999"      # what a killed migration leaves
        stray.mkdir()
        assert [p for p in there.check().problems if str(stray) in p and "virsh restore" in p]
    finally:
        for info in there.domains(inactive=False):
            there.destroy(info.name)
    virsh("destroy", "c", check=True)
    qemu_img_clean(disk)


def test_a_running_domain_migrates_with_reason_migrated(counter, virsh, host, tmp_path):
    """Live (QMP migrate from the jailed source to a jailed destination): the guest
    counts on through the move, never from zero again."""
    from kvmkit.manager import Host
    from kvmkit.manager.snapshots import state_dir
    other = Host(tmp_path / "third-host")
    try:
        host.snapshot_create("c", "before")                # the guest keeps running
        before = count(state_dir(host.sd, "c", "before"))
        virsh("migrate", "c", str(other.state_dir), check=True)
        assert (other.lookup("c").state, other.lookup("c").reason) == ("running", "migrated")
        assert virsh("-q", "domstate", "--reason", "c").stdout == "shut off (migrated)\n"
        line = next(ln for ln in other.sd.log("c").read_text().splitlines() if "migrated live:" in ln)
        print(line)                                         # transferred, total time, downtime
        assert int(line.rsplit("downtime ", 1)[1].split()[0]) < 1000
        time.sleep(0.2)
        other.snapshot_create("c", "after")
        assert count(state_dir(other.sd, "c", "after")) > before
    finally:
        for info in other.domains(inactive=False):
            other.destroy(info.name)


def test_state_commands_refuse_bad_input(counter, virsh, host, tmp_path):
    def error(*args: str) -> str:
        res = virsh(*args)
        assert res.returncode == 1, (args, res.stdout)
        assert "Traceback" not in res.stderr
        return res.stderr
    exists = tmp_path / "exists"
    exists.mkdir()
    assert f"'{exists}' already exists: a saved state is a new directory" in error("save", "c", str(exists))
    assert "is not a kvmkit saved state" in error("restore", str(exists))
    assert "is not a kvmkit saved state" in error("restore", str(tmp_path / "nothing"))
    assert "the destination is this state directory" in error("migrate", "c", str(host.state_dir))
    assert "network URIs need live migration" in error("migrate", "c", "qemu+tcp://elsewhere/system")
    saved = tmp_path / "s"
    virsh("save", "c", str(saved), check=True)
    assert "domain is not running" in error("save", "c", str(tmp_path / "s2"))
    assert "domain is not running" in error("migrate", "c", str(tmp_path / "x"))
    virsh("restore", str(saved), check=True)
    assert "domain 'c' is already active" in error("restore", str(saved))
    assert virsh("-q", "domstate", "c").stdout == "running\n"           # the refusals changed nothing
    virsh("destroy", "c", check=True)
    t = tmp_path / "t.xml"
    t.write_text(tiny_xml("t", Path(host.lookup("c").definition.kernel)))
    virsh("create", str(t), check=True)
    assert "cannot do managed save for transient domain" in error("managedsave", "t")
    assert virsh("-q", "domstate", "t").stdout == "running\n"
    assert host.check().problems == []
