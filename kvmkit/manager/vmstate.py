"""A running domain's VM state, saved through its VMM and started again.

A saved state is a **directory** (what ``virsh save NAME FILE`` creates at
FILE, what ``managedsave``, running snapshots and migration keep): the
VMM's snapshot files (``vmstate``, ``memory``: see :mod:`kvmkit.vmm.snapshot`)
written by QMP ``kvmkit-snapshot-save`` (``kvmkit-savevm`` for a running
snapshot: disks too), plus ``domain.xml`` (the live
definition, with its vsock CID and tap names) and ``kvmkit-save.json``
(name, uuid, whether it was running or paused).  A directory rather than
one archive because a restore maps ``memory`` copy-on-write: it starts in
milliseconds and reads nothing up front, where an archive would have to be
unpacked first.  The restored VMM keeps that mapping for its life, so a
state directory is never written again after it is made (each save makes a
new one, under a temporary name renamed into place: a killed save leaves a
temporary that the consistency check removes, never half a state).

The VMM's own disk images stay where they are: a saved state names them,
and a restore reopens them (the VMM quits after a save, flushing them).
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from kvmkit.manager import files, journal
from kvmkit.manager.domain import DomainDef
from kvmkit.manager.domain_parse import parse_domain
from kvmkit.manager.errors import OperationFailed, OperationInvalid, StorageError
from kvmkit.manager.rundir import RunDir
from kvmkit.manager.statedir import StateDir
from kvmkit.manager.vmmlink import qmp

SAVE_TIMEOUT = 600.0             # RAM is written by the VMM: seconds per GiB on a busy host
QUIT_TIMEOUT = 30.0
INFO_FILE = "kvmkit-save.json"
DOMAIN_FILE = "domain.xml"
STATE_FILES = ("vmstate", "memory")


@dataclass(frozen=True)
class SavedState:
    path: Path
    name: str
    uuid: str
    paused: bool                  # the domain was paused when saved (it restores paused)
    live: DomainDef               # the live definition (vsock CID, tap names)


def open_state(path: Path) -> SavedState:
    """Read a state directory's description; a clear error if it is not one."""
    path = Path(path).absolute()
    info = files.read_json(path / INFO_FILE) if path.is_dir() else None
    if not isinstance(info, dict) or any(not (path / f).is_file() for f in STATE_FILES + (DOMAIN_FILE,)):
        raise StorageError(f"'{path}' is not a kvmkit saved state (a directory made by virsh save)")
    live = parse_domain((path / DOMAIN_FILE).read_text(), str(path / DOMAIN_FILE))
    return SavedState(path, live.name, live.uuid, bool(info.get("paused")), live)


def running(rd: RunDir) -> bool:
    """Are the vCPUs running (not paused)?"""
    return qmp(rd.qmp_socket, "query-status")["status"] == "running"


def pause(rd: RunDir) -> None:
    qmp(rd.qmp_socket, "stop")


def resume(rd: RunDir) -> None:
    if rd.alive() and qmp(rd.qmp_socket, "query-status")["status"] == "paused":
        qmp(rd.qmp_socket, "cont")


def save_and_quit(sd: StateDir, domain: str, target: Path, why: str) -> None:
    """Pause the domain, save it to ``target``, end its VMM (``why``:
    ``save``, ``migrate``).  Journalled: a manager killed before the state
    is complete leaves the guest running again; after, the VMM is ended."""
    rd = RunDir(sd.run_dir(domain))
    was_running = running(rd)
    with journal.intent(sd, "state-save", domain=domain, path=str(Path(target).absolute()), why=why,
                        we_paused=was_running):
        if was_running:
            pause(rd)
        try:
            save(rd, target, paused=not was_running)
        except BaseException:
            if was_running:
                resume(rd)
            raise
        quit_vmm(rd, why)


@journal.handler("state-save")
def _finish_save(sd: StateDir, data: dict) -> None:
    rd = RunDir(sd.run_dir(data["domain"]))
    if not rd.alive():
        return
    try:
        open_state(Path(data["path"]))
    except StorageError:                        # no complete state: the guest goes on
        if data.get("we_paused"):
            resume(rd)
        return
    quit_vmm(rd, data["why"])                   # the state is complete: finish the save


def save(rd: RunDir, target: Path, paused: bool, disk_snapshot: str | None = None) -> Path:
    """Write the (paused) VM of ``rd`` to the new directory ``target``, with
    ``disk_snapshot`` also a qcow2 internal snapshot of every writable disk."""
    target = Path(target).absolute()
    if target.exists() or target.is_symlink():
        raise OperationInvalid(f"'{target}' already exists: a saved state is a new directory")
    if not target.parent.is_dir():
        raise StorageError(f"cannot save to '{target}': {target.parent} is not a directory")
    area = rd.save_area if rd.save_area.is_dir() else target.parent   # a jailed VMM writes only there
    tmp = area / temporary_name(target).name
    try:
        tmp.mkdir(mode=0o700)
        if area == rd.save_area:
            st = area.stat()
            os.chown(tmp, st.st_uid, st.st_gid)       # the jailed VMM's, while it runs
    except OSError as e:
        raise StorageError(f"cannot save to '{target}': {e.strerror}") from None
    try:
        if disk_snapshot:
            qmp(rd.qmp_socket, "kvmkit-savevm", {"path": str(tmp), "name": disk_snapshot}, timeout=SAVE_TIMEOUT)
        else:
            qmp(rd.qmp_socket, "kvmkit-snapshot-save", {"path": str(tmp)}, timeout=SAVE_TIMEOUT)
        _own(tmp)
        files.atomic_write(tmp / DOMAIN_FILE, rd.live_xml.read_text())
        files.write_json(tmp / INFO_FILE, {"paused": paused, "saved": time.time()})
        for name in STATE_FILES:
            files.fsync_path(tmp / name)
        _move_into_place(tmp, target)
        files.fsync_dir(target.parent)
    except BaseException:
        remove_tree(tmp)
        raise
    return target


def _own(tree: Path) -> None:
    """What a jailed VMM wrote belongs to its uid, which the next VM may get: the manager's now."""
    uid, gid = os.getuid(), os.getgid()
    for path in [tree, *tree.rglob("*")]:
        if path.lstat().st_uid != uid:
            os.lchown(path, uid, gid)


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename; a target on another file system (``virsh save /elsewhere``) gets a copy under a
    temporary name first, so ``target`` is complete or absent."""
    try:
        os.rename(tmp, target)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise StorageError(f"cannot save to '{target}': {e.strerror}") from None
    copy = temporary_name(target)
    try:
        shutil.copytree(tmp, copy)
        for name in STATE_FILES:
            files.fsync_path(copy / name)
        os.rename(copy, target)
    except OSError as e:
        remove_tree(copy)
        raise StorageError(f"cannot save to '{target}': {e.strerror}") from None
    remove_tree(tmp)


def temporary_name(target: Path) -> Path:
    """A sibling name the consistency check knows as a temporary of this process."""
    return target.with_name(f"{target.name}{files.TMP_MARK}{os.getpid()}-{os.urandom(3).hex()}")


def remove_tree(path: Path) -> None:
    """Remove a state directory (a VMM that maps its memory keeps its pages)."""
    shutil.rmtree(path, ignore_errors=True)
    if Path(path).parent.exists():
        files.fsync_dir(Path(path).parent)


def quit_vmm(rd: RunDir, why: str) -> None:
    """End the VMM cleanly after a save (QMP quit: it flushes and closes its
    disks), recording ``why`` (``save``, ``migrate``, ``snapshot``) first so
    the domain reads as shut off for that reason."""
    rd.update_status(stopping=why)
    try:
        qmp(rd.qmp_socket, "quit")
    except OperationFailed:
        pass                                    # the connection may close before the reply
    deadline = time.monotonic() + QUIT_TIMEOUT
    while rd.alive():
        if time.monotonic() > deadline:
            from kvmkit.manager.lifecycle import destroy
            destroy(rd)
            return
        time.sleep(0.02)
