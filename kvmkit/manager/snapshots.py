"""Snapshots of shut-off domains: a qcow2 internal snapshot in every
writable disk, plus libvirt's ``domainsnapshot`` XML (with the domain
definition of that moment) in ``snapshots/NAME/SNAP.xml``.

The metadata is written last (create) or removed last (delete), and each
operation is journalled: an interrupted create is undone (the internal
snapshots it made are deleted), an interrupted revert or delete is finished.
Snapshots of running domains need the VM state save of issue 9.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from kvmkit.block import open_image
from kvmkit.block.qcow2 import snapshots as qsnap
from kvmkit.errors import ImageError
from kvmkit.manager import files, journal
from kvmkit.manager.domain import DomainDef
from kvmkit.manager.domain_parse import parse_domain
from kvmkit.manager.domain_xml import domain_xml
from kvmkit.manager.errors import NoSnapshot, NotSupportedYet, OperationFailed, OperationInvalid, StorageError
from kvmkit.manager.locks import locked
from kvmkit.manager.statedir import StateDir
from kvmkit.manager.xmltree import element, parse, serialise


@dataclass(frozen=True)
class Snapshot:
    name: str
    created: int                  # seconds since the epoch
    state: str                    # the domain's state when taken (shutoff)
    description: str | None
    domain: DomainDef


def names(sd: StateDir, domain: str) -> list[str]:
    folder = sd.snapshot_dir(domain)
    if not folder.is_dir():
        return []
    return sorted(e.name[:-4] for e in os.scandir(folder) if e.name.endswith(".xml") and not files.is_temporary(e.name))


def load(sd: StateDir, domain: str, name: str) -> Snapshot:
    path = sd.snapshot_dir(domain) / f"{name}.xml"
    try:
        root = parse(path.read_text(), str(path))
    except FileNotFoundError:
        raise NoSnapshot(f"no domain snapshot with matching name '{name}'") from None
    dom = root.find("domain")
    return Snapshot(root.child_text("name") or name, int(root.child_text("creationTime") or 0),
                    root.child_text("state") or "shutoff", root.child_text("description"),
                    parse_domain(serialise(dom)) if dom is not None else None)  # type: ignore[arg-type]


def listing(sd: StateDir, domain: str) -> list[Snapshot]:
    return sorted((load(sd, domain, n) for n in names(sd, domain)), key=lambda s: (s.created, s.name))


def forget_all(sd: StateDir, domain: str) -> None:
    """Drop the metadata (``undefine --snapshots-metadata``); disks keep their data."""
    for n in names(sd, domain):
        files.remove(sd.snapshot_dir(domain) / f"{n}.xml")


def _metadata(name: str, d: DomainDef, description: str | None) -> str:
    disks = [element("disk", name=x.target, snapshot="internal" if x.writable else "no") for x in d.disks]
    root = element("domainsnapshot", children=[
        element("name", name), element("description", description) if description else None,
        element("state", "shutoff"), element("creationTime", str(int(time.time()))),
        element("memory", snapshot="no"), element("disks", children=disks),
        parse(domain_xml(d))])
    return serialise(root)


def _stopped(host, domain: str) -> DomainDef:
    if host._rd(domain).alive():
        raise NotSupportedYet("snapshots of a running domain need VM state save (issue 9); shut it down first")
    return host.store.load(domain)


def _qcow2_disks(d: DomainDef) -> list[str]:
    out = []
    for x in d.writable_disks:
        if x.format != "qcow2":
            raise OperationInvalid(f"internal snapshot of disk '{x.target}' needs qcow2, it is {x.format}")
        out.append(x.source)
    return out


def _each_disk(paths: list[str], fn) -> None:
    for path in paths:
        try:
            with open_image(path, "qcow2", backing=False) as img:
                fn(img)
        except ImageError as e:
            raise StorageError(f"{path}: {e}") from None


def _has(img, name: str) -> bool:
    return any(s.name == name for s in qsnap.read_snapshots(img))


def create(host, domain: str, name: str, description: str | None = None) -> None:
    sd = host.sd
    if not name or "/" in name or name.startswith("."):
        raise OperationFailed(f"invalid snapshot name '{name}'")
    journal.recover(sd)
    with locked(sd.domain_lock(domain), f"domain '{domain}'"):
        d = _stopped(host, domain)
        if name in names(sd, domain):
            raise OperationInvalid(f"domain snapshot '{name}' already exists")
        disks = _qcow2_disks(d)
        with journal.intent(sd, "snapshot-create", domain=domain, snapshot=name, disks=disks):
            _each_disk(disks, lambda img: qsnap.create_snapshot(img, name))
            sd.snapshot_dir(domain).mkdir(exist_ok=True)
            files.atomic_write(sd.snapshot_dir(domain) / f"{name}.xml", _metadata(name, d, description))


def revert(host, domain: str, name: str) -> None:
    sd = host.sd
    journal.recover(sd)
    with locked(sd.domain_lock(domain), f"domain '{domain}'"):
        _stopped(host, domain)
        snap = load(sd, domain, name)
        disks = _qcow2_disks(snap.domain)
        with journal.intent(sd, "snapshot-revert", domain=domain, snapshot=name, disks=disks):
            _each_disk(disks, lambda img: qsnap.apply_snapshot(img, name))
            with host.store.host_lock():
                host.store.save(snap.domain)          # the definition of that moment, as libvirt does


def delete(host, domain: str, name: str) -> None:
    sd = host.sd
    journal.recover(sd)
    with locked(sd.domain_lock(domain), f"domain '{domain}'"):
        snap = load(sd, domain, name)
        if host._rd(domain).alive():
            raise NotSupportedYet("deleting a snapshot of a running domain needs VM state save (issue 9)")
        disks = _qcow2_disks(snap.domain)
        with journal.intent(sd, "snapshot-delete", domain=domain, snapshot=name, disks=disks):
            _delete_disk_snapshots(disks, name)
            files.remove(sd.snapshot_dir(domain) / f"{name}.xml")


def _delete_disk_snapshots(disks: list[str], name: str) -> None:
    _each_disk([p for p in disks if Path(p).exists()],
               lambda img: qsnap.delete_snapshot(img, name) if _has(img, name) else None)


@journal.handler("snapshot-create")
def _undo_create(sd: StateDir, data: dict) -> None:
    if not (sd.snapshot_dir(data["domain"]) / f"{data['snapshot']}.xml").exists():
        _delete_disk_snapshots(data["disks"], data["snapshot"])


@journal.handler("snapshot-revert")
def _finish_revert(sd: StateDir, data: dict) -> None:
    _each_disk(data["disks"], lambda img: qsnap.apply_snapshot(img, data["snapshot"]))
    path = sd.snapshot_dir(data["domain"]) / f"{data['snapshot']}.xml"
    snap = load(sd, data["domain"], data["snapshot"]) if path.exists() else None
    if snap is not None and snap.domain is not None:
        files.atomic_write(sd.definition(data["domain"]), domain_xml(snap.domain))


@journal.handler("snapshot-delete")
def _finish_delete(sd: StateDir, data: dict) -> None:
    _delete_disk_snapshots(data["disks"], data["snapshot"])
    files.remove(sd.snapshot_dir(data["domain"]) / f"{data['snapshot']}.xml")
