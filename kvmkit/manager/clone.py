"""``virsh clone`` with virt-clone's meaning: a new domain with a new UUID,
new MAC addresses, a new vsock CID, and its own copy of every writable disk.

A *linked* clone (the default) must not let the original's later writes
show through, so the original's current qcow2 becomes a frozen base
(a hard link, then a new overlay renamed over the original's path: the
original's definition does not change) and the clone gets its own overlay
of the same base.  ``full`` copies every writable disk instead; a raw disk
is always copied (it cannot sit on a base).  Read-only disks are shared.

Both need the original shut off (virt-clone's rule) and are journalled (see
:mod:`journal`): a manager killed mid-clone leaves either a complete new
domain or none, and the original always works.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from kvmkit.manager import files, images, journal
from kvmkit.manager.domain import CharDev, Disk, DomainDef, Vsock, new_mac, new_uuid
from kvmkit.manager.domain_parse import parse_domain
from kvmkit.manager.errors import OperationFailed, OperationInvalid
from kvmkit.manager.locks import locked
from kvmkit.manager.statedir import StateDir

_NAME_OK = re.compile(r"^[^/\x00-\x1f\x7f]{1,200}$")


def clone(host, original: str, new_name: str, full: bool = False) -> DomainDef:
    from kvmkit.manager import snapshots
    sd: StateDir = host.sd
    if not _NAME_OK.match(new_name) or new_name in (".", ".."):
        raise OperationFailed(f"invalid domain name '{new_name}'")
    journal.recover(sd)
    first, second = sorted((original, new_name))
    with locked(sd.domain_lock(first), f"domain '{first}'"), locked(sd.domain_lock(second), f"domain '{second}'"):
        if host.store.exists(new_name) or host._rd(new_name).alive():
            raise OperationFailed(f"domain '{new_name}' already exists")
        if host._rd(original).alive():
            raise OperationInvalid(f"domain '{original}' must be shut off to be cloned")
        src = host.store.load(original)
        if not full and snapshots.names(sd, original) and any(d.format == "qcow2" for d in src.writable_disks):
            raise OperationInvalid(f"domain '{original}' has snapshots, which a linked clone would hide "
                                   "in the frozen base: use --full")
        new = _identity(host, src, new_name)
        with journal.intent(sd, "clone", domain=new_name) as rec:
            disks = tuple(_clone_disk(d, new_name, i, full, rec) if d.writable else d
                          for i, d in enumerate(src.disks))
            new = new.replace(disks=disks)
            with host.store.host_lock():
                host.store.check_unique(new, host._transient_uuids())
                host.store.save(new)                    # the commit point
    return new


def _identity(host, src: DomainDef, name: str) -> DomainDef:
    """Everything that must differ between two domains that run at once."""
    taken_macs: set[str] = set()
    cids = []
    for other in host.domains():
        taken_macs.update(other.definition.macs)
        if other.definition.vsock is not None and other.definition.vsock.fixed is not None:
            cids.append(other.definition.vsock.fixed)
    nics = []
    for nic in src.interfaces:
        mac = new_mac(taken_macs)
        taken_macs.add(mac)
        nics.append(type(nic)(nic.type, mac, nic.source, None))     # a fixed tap name would clash
    vsock = src.vsock
    if vsock is not None and vsock.fixed is not None:
        vsock = Vsock(max(cids, default=2) + 1)
    serial = src.serial
    if serial is not None and serial.path:
        serial = CharDev(serial.type, _renamed(serial.path, src.name, name), serial.console)
    return src.replace(name=name, uuid=new_uuid(), interfaces=tuple(nics), vsock=vsock, serial=serial,
                       title=None)


def _renamed(path: str, old: str, new: str) -> str:
    p = Path(path)
    return str(p.with_name(p.name.replace(old, new))) if old in p.name else f"{path}.{new}"


def _new_disk_path(d: Disk, name: str, index: int, fmt: str) -> Path:
    """virt-clone's names: NEW.qcow2, NEW-1.qcow2, ... beside the original."""
    folder = Path(d.source).parent
    stem = name if index == 0 else f"{name}-{index}"
    path = folder / f"{stem}.{fmt}"
    n = 0
    while path.exists():
        n += 1
        path = folder / f"{stem}-clone{n}.{fmt}"
    return path


def _clone_disk(d: Disk, name: str, index: int, full: bool, rec: journal.Record) -> Disk:
    src = Path(d.source)
    if full or d.format != "qcow2":
        dst = _new_disk_path(d, name, index, d.format)
        rec.note("created", str(dst))
        images.copy(src, dst, d.format)
        return Disk(str(dst), d.target, d.format, False, d.cache, d.discard, None)
    base = src.with_name(f"{src.stem}.base-{rec.ident}{src.suffix}")
    rec.note("bases", [str(base), str(src)])
    os.link(src, base)                               # the original's data, frozen under a new name
    files.fsync_dir(base.parent)
    os.chmod(base, 0o444)
    images.overlay(base, src, replace=True)          # the original continues on top of it
    dst = _new_disk_path(d, name, index, "qcow2")
    rec.note("created", str(dst))
    images.overlay(base, dst)
    return Disk(str(dst), d.target, "qcow2", False, d.cache, d.discard, None)


@journal.handler("clone")
def _recover(sd: StateDir, data: dict) -> None:
    """Committed (the definition exists): nothing to do.  Otherwise remove
    the clone's disks, and any base the original does not yet stand on."""
    path = sd.definition(data["domain"])
    if path.exists():
        try:
            d = parse_domain(path.read_text())
            if all(Path(x.source).exists() for x in d.disks):
                return
        except Exception:
            pass
    for created in data.get("created", []):
        files.remove(Path(created))
    for base, original in data.get("bases", []):
        b, o = Path(base), Path(original)
        if b.exists() and o.exists() and os.path.samefile(b, o):
            files.remove(b)                          # the original was not yet moved onto it
