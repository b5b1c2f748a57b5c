"""virsh's commands that copy a domain: ``clone`` (virt-clone's meaning),
snapshots (of shut-off and running domains), and the state commands: save,
restore, managedsave, migrate."""

from __future__ import annotations

import time
from typing import Any

from kvmkit.cli.virsh import command, domain_of
from kvmkit.cli.virsh_output import table
from kvmkit.manager.errors import OperationFailed


def clone(host, a) -> str:
    if not a.auto_clone:
        raise OperationFailed("--auto-clone is required (kvmkit names the new disks itself; --file is not supported)")
    info = domain_of(host, a.original)
    new = host.clone(info.name, a.name, full=a.full)
    old = {d.target: d.source for d in info.definition.disks}
    out = "".join(f"Allocating '{d.source.rsplit('/', 1)[-1]}'\n" for d in new.definition.disks
                  if old.get(d.target) != d.source)
    return out + f"\nClone '{new.name}' created successfully.\n"


def snapshot_create_as(host, a) -> str:
    info = domain_of(host, a.domain)
    host.snapshot_create(info.name, a.name, a.description)
    return f"Domain snapshot {a.name} created\n"


def snapshot_list(host, a) -> str:
    snaps = host.snapshots(domain_of(host, a.domain).name)
    if a.name:
        return "".join(f"{s.name}\n" for s in snaps)
    rows = [[s.name, time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(s.created)), s.state] for s in snaps]
    return table(["Name", "Creation Time", "State"], rows)


def snapshot_revert(host, a) -> str:
    host.snapshot_revert(domain_of(host, a.domain).name, a.snapshotname)
    return ""


def snapshot_delete(host, a) -> str:
    host.snapshot_delete(domain_of(host, a.domain).name, a.snapshotname)
    return f"Domain snapshot {a.snapshotname} deleted\n"


def save(host, a) -> str:
    info = domain_of(host, a.domain)
    host.save(info.name, a.file)
    return f"\nDomain '{info.name}' saved to {a.file}\n"


def restore(host, a) -> str:
    host.restore(a.file, paused=a.paused, running=a.running)
    return f"Domain restored from {a.file}\n"


def managedsave(host, a) -> str:
    info = domain_of(host, a.domain)
    host.managedsave(info.name)
    return f"\nDomain '{info.name}' state saved by libvirt\n"


def managedsave_remove(host, a) -> str:
    info = domain_of(host, a.domain)
    if host.managedsave_remove(info.name):
        return f"Removed managedsave image for domain '{info.name}'\n"
    return f"Domain '{info.name}' has no manage save image; removal skipped\n"


def migrate(host, a) -> str:
    host.migrate(domain_of(host, a.domain).name, a.desturi, persistent=a.persistent,
                 undefine_source=a.undefinesource)
    return ""


def check(host, a) -> str:
    report = host.check()
    notes = "".join(f"recovered: {r}\n" for r in report.recovered)
    if report.problems:
        import sys
        sys.stdout.write(notes)
        raise OperationFailed("the state directory is not consistent:\n  " + "\n  ".join(report.problems))
    return notes + f"State directory {host.state_dir} is consistent\n"


def register(sub: Any) -> None:
    p = command(sub, "clone", clone, "clone a domain as virt-clone does (new UUID, MACs, vsock CID, disks)",
                "Failed to clone domain '{original}'")
    p.add_argument("--original", required=True, metavar="NAME")
    p.add_argument("--name", required=True, metavar="NEW")
    p.add_argument("--auto-clone", action="store_true", help="name the new disks NEW.qcow2, NEW-1.qcow2, ...")
    p.add_argument("--full", action="store_true", help="copy the disks instead of qcow2 linked clones")
    p = command(sub, "snapshot-create-as", snapshot_create_as,
                "create a snapshot: disks (qcow2 internal snapshots) and, of a running domain, its memory",
                "Failed to create snapshot of domain '{domain}'")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--description", help="description of the snapshot")
    p = command(sub, "snapshot-list", snapshot_list, "list snapshots for a domain")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--name", action="store_true", help="list snapshot names only")
    for name, fn, help_, verb in (("snapshot-revert", snapshot_revert,
                                   "revert a domain to a snapshot (a running snapshot: memory and disks; "
                                   "the domain ends in the snapshot's state)", "revert"),
                                  ("snapshot-delete", snapshot_delete, "delete a domain snapshot", "delete")):
        p = command(sub, name, fn, help_, f"Failed to {verb} snapshot '{{snapshotname}}'")
        p.add_argument("domain", metavar="DOMAIN")
        p.add_argument("snapshotname", metavar="SNAPSHOT")
    p = command(sub, "save", save, "save a domain state to a file and stop the domain (kvmkit: FILE is created "
                "as a directory holding the state; restore maps its memory, so keep it while restored)",
                "Failed to save domain '{domain}' to {file}")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("file", metavar="FILE")
    p = command(sub, "restore", restore, "restore a domain from a saved state (made by save)",
                "Failed to restore domain from {file}")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--paused", action="store_true", help="restore into a paused state")
    p.add_argument("--running", action="store_true", help="restore into a running state")
    command(sub, "managedsave", managedsave, "save a domain's state and stop it; the next start continues it",
            "Failed to save domain '{domain}' state").add_argument("domain", metavar="DOMAIN")
    command(sub, "managedsave-remove", managedsave_remove, "remove managed save of a domain",
            "Failed to remove managed save image for domain '{domain}'").add_argument("domain", metavar="DOMAIN")
    p = command(sub, "migrate", migrate, "migrate a running domain to another kvmkit state directory "
                "(kvmkit://DIR or a path; disks stay where they are): today save, then restore there "
                "(the guest pauses for both), live migration when the VMM has it",
                "Failed to migrate domain '{domain}'")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("desturi", metavar="DESTURI")
    p.add_argument("--persistent", action="store_true", help="persist the domain on the destination")
    p.add_argument("--undefinesource", action="store_true", help="undefine the domain on the source")
    command(sub, "check", check, "kvmkit: recover interrupted operations, then check the state directory's "
            "consistency (exit status 1 if it is not)")
