"""Domain snapshots: a qcow2 internal snapshot in every writable disk,
plus libvirt's ``domainsnapshot`` XML (with the domain definition of that
moment) in ``snapshots/NAME/SNAP.xml``.

A running (or paused) domain's snapshot also keeps its VM state in
``snapshots/NAME/SNAP.state/`` (see :mod:`vmstate`).  Its VMM takes the
disk snapshots and writes the state in one paused, I/O-quiesced moment
(QMP ``kvmkit-savevm``), so the disks agree
with the memory; the guest then continues.  Reverting to it stops the
domain's VMM, reverts the disks and starts a VMM from the state: memory and
disks are both as they were.  A disk snapshot of a domain that is running
is deleted by its VMM (QMP ``blockdev-snapshot-delete-internal-sync``),
never behind its back: another writer of an open qcow2 file would leave the
VMM's metadata caches stale.

The metadata is written last (create) or removed last (delete), and each
operation is journalled: an interrupted create is undone (the internal
snapshots it made are deleted, a guest it paused continues), an interrupted
revert or delete is finished (a revert left shut off, if the manager died
before it started the VMM).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from kvmkit.block import open_image
from kvmkit.block.qcow2 import snapshots as qsnap
from kvmkit.errors import ImageError
from kvmkit.manager import files, journal, lifecycle, vmstate
from kvmkit.manager.domain import DomainDef
from kvmkit.manager.domain_parse import parse_domain
from kvmkit.manager.domain_xml import domain_xml
from kvmkit.manager.errors import NoSnapshot, OperationFailed, OperationInvalid, StorageError
from kvmkit.manager.locks import locked
from kvmkit.manager.rundir import RunDir
from kvmkit.manager.statedir import StateDir
from kvmkit.manager.vmmlink import qmp
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
    """In creation order.  ``creationTime`` counts whole seconds (libvirt's
    schema), so two snapshots taken within one second are ordered by when
    their metadata was written (it is written last, once per create)."""
    def order(s: Snapshot) -> tuple[int, int, str]:
        try:
            written = os.stat(sd.snapshot_dir(domain) / f"{s.name}.xml").st_mtime_ns
        except FileNotFoundError:
            written = 0
        return (s.created, written, s.name)
    return sorted((load(sd, domain, n) for n in names(sd, domain)), key=order)


def forget_all(sd: StateDir, domain: str) -> None:
    """Drop the metadata (``undefine --snapshots-metadata``); disks keep their data."""
    for n in names(sd, domain):
        files.remove(sd.snapshot_dir(domain) / f"{n}.xml")


def state_dir(sd: StateDir, domain: str, name: str) -> Path:
    """Where a running snapshot keeps its VM state."""
    return sd.snapshot_dir(domain) / f"{name}.state"


def _metadata(name: str, d: DomainDef, description: str | None, state: str = "shutoff") -> str:
    disks = [element("disk", name=x.target, snapshot="internal" if x.writable else "no") for x in d.disks]
    root = element("domainsnapshot", children=[
        element("name", name), element("description", description) if description else None,
        element("state", state), element("creationTime", str(int(time.time()))),
        element("memory", snapshot="no" if state == "shutoff" else "internal"), element("disks", children=disks),
        parse(domain_xml(d))])
    return serialise(root)


def _definition(host, domain: str) -> DomainDef:
    """The inactive definition (a transient domain's live one)."""
    if host.store.exists(domain):
        return host.store.load(domain)
    return parse_domain(host._rd(domain).live_xml.read_text())


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
    if not name or "/" in name or name.startswith(".") or files.is_temporary(name):
        raise OperationFailed(f"invalid snapshot name '{name}'")
    journal.recover(sd)
    with locked(sd.domain_lock(domain), f"domain '{domain}'"):
        rd = host._rd(domain)
        d = _definition(host, domain)
        if name in names(sd, domain):
            raise OperationInvalid(f"domain snapshot '{name}' already exists")
        disks = _qcow2_disks(d)
        sd.snapshot_dir(domain).mkdir(exist_ok=True)
        if not rd.alive():
            with journal.intent(sd, "snapshot-create", domain=domain, snapshot=name, disks=disks):
                _each_disk(disks, lambda img: qsnap.create_snapshot(img, name))
                files.atomic_write(sd.snapshot_dir(domain) / f"{name}.xml", _metadata(name, d, description))
            return
        with journal.intent(sd, "snapshot-create", domain=domain, snapshot=name, disks=disks,
                            running=True) as record:
            was_running = vmstate.running(rd)
            record.note("we_paused", was_running)         # before the pause: recovery resumes it
            if was_running:
                vmstate.pause(rd)
            try:
                vmstate.save(rd, state_dir(sd, domain, name), paused=not was_running, disk_snapshot=name)
                files.atomic_write(sd.snapshot_dir(domain) / f"{name}.xml",
                                   _metadata(name, d, description, "running" if was_running else "paused"))
            finally:
                if was_running:
                    vmstate.resume(rd)


def revert(host, domain: str, name: str) -> None:
    """Disks (and, for a running snapshot, memory) as they were; the domain
    ends in the snapshot's state (running, paused or shut off), as libvirt's."""
    sd = host.sd
    journal.recover(sd)
    with locked(sd.domain_lock(domain), f"domain '{domain}'"):
        snap = load(sd, domain, name)
        state = None
        if snap.state != "shutoff":
            state = vmstate.open_state(state_dir(sd, domain, name))
        disks = _qcow2_disks(snap.domain)
        persistent = host.store.exists(domain)
        with journal.intent(sd, "snapshot-revert", domain=domain, snapshot=name, disks=disks):
            rd = host._rd(domain)
            if rd.alive():
                if not persistent and state is None:
                    raise OperationInvalid("reverting a transient domain to a shut-off snapshot would end it")
                vmstate.quit_vmm(rd, "snapshot")
            _each_disk(disks, lambda img: qsnap.apply_snapshot(img, name))
            if persistent:
                with host.store.host_lock():
                    host.store.save(snap.domain)      # the definition of that moment, as libvirt does
            if state is not None:
                lifecycle.start(sd, snap.domain, persistent, restore=state, reason="from snapshot")


def delete(host, domain: str, name: str) -> None:
    sd = host.sd
    journal.recover(sd)
    with locked(sd.domain_lock(domain), f"domain '{domain}'"):
        snap = load(sd, domain, name)
        disks = _qcow2_disks(snap.domain)
        with journal.intent(sd, "snapshot-delete", domain=domain, snapshot=name, disks=disks):
            _delete_disk_snapshots(sd, domain, disks, name)
            vmstate.remove_tree(state_dir(sd, domain, name))
            files.remove(sd.snapshot_dir(domain) / f"{name}.xml")


def _delete_disk_snapshots(sd: StateDir, domain: str, disks: list[str], name: str) -> None:
    """Delete ``name`` from each disk that has it: through the domain's VMM
    if one runs (it has the disks open), else in the files."""
    rd = RunDir(sd.run_dir(domain))
    if rd.alive():
        open_disks = {b["inserted"]["file"] for b in qmp(rd.qmp_socket, "query-block") if "inserted" in b}
        for path in (p for p in disks if p in open_disks):
            try:
                qmp(rd.qmp_socket, "blockdev-snapshot-delete-internal-sync", {"device": path, "name": name})
            except OperationFailed as e:
                if "no snapshot named" not in str(e):
                    raise
        disks = [p for p in disks if p not in open_disks]
    _each_disk([p for p in disks if Path(p).exists()],
               lambda img: qsnap.delete_snapshot(img, name) if _has(img, name) else None)


@journal.handler("snapshot-create")
def _undo_create(sd: StateDir, data: dict) -> None:
    domain, name = data["domain"], data["snapshot"]
    if not (sd.snapshot_dir(domain) / f"{name}.xml").exists():
        _delete_disk_snapshots(sd, domain, data["disks"], name)
        vmstate.remove_tree(state_dir(sd, domain, name))
    if any(data.get("we_paused", [])):            # the guest this operation paused continues
        vmstate.resume(RunDir(sd.run_dir(domain)))


@journal.handler("snapshot-revert")
def _finish_revert(sd: StateDir, data: dict) -> None:
    rd = RunDir(sd.run_dir(data["domain"]))
    if rd.alive():
        if not rd.status().get("stopping"):
            return      # the VMM the revert started (only after the disks were reverted): done
        vmstate.quit_vmm(rd, "snapshot")     # the old one, killed mid-quit with its manager: let it end
    _each_disk(data["disks"], lambda img: qsnap.apply_snapshot(img, data["snapshot"]))
    path = sd.snapshot_dir(data["domain"]) / f"{data['snapshot']}.xml"
    snap = load(sd, data["domain"], data["snapshot"]) if path.exists() else None
    if snap is None or snap.domain is None:
        return
    persistent = sd.definition(data["domain"]).exists()
    if persistent:
        files.atomic_write(sd.definition(data["domain"]), domain_xml(snap.domain))
    if snap.state != "shutoff":        # killed after the old VMM quit: the snapshot's guest runs, as asked
        state = vmstate.open_state(state_dir(sd, data["domain"], data["snapshot"]))
        lifecycle.start(sd, snap.domain, persistent, restore=state, reason="from snapshot")


@journal.handler("snapshot-delete")
def _finish_delete(sd: StateDir, data: dict) -> None:
    _delete_disk_snapshots(sd, data["domain"], data["disks"], data["snapshot"])
    vmstate.remove_tree(state_dir(sd, data["domain"], data["snapshot"]))
    files.remove(sd.snapshot_dir(data["domain"]) / f"{data['snapshot']}.xml")
