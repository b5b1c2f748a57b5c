"""Files handed to a jailed VM's user while it runs, and given back after.

A jailed VMM runs as its own uid, so its writable disks and output files are
chowned to that uid, and directories it shares with other VMs (a snapshot
two clones restore) get an ACL entry for it; libvirt's DAC driver does the
same.  The supervisor gives everything back when the VM ends; but a
supervisor SIGKILLed (or the host's OOM killer) cannot, and the user's disk
would stay owned by a uid nobody has.  So what was handed over is written
down first, in ``DIR/UID.handover.json`` next to the uid's lock
(:mod:`kvmkit.host.ids`), and removed once given back; a record whose uid
lock is free again belongs to holders that all died, and the next jailed
run (:func:`take_back_abandoned`) gives its files back.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from kvmkit.atomicfile import atomic_write
from kvmkit.host import acl, ids

SUFFIX = ".handover.json"


@dataclass
class Handover:
    """What one VM's uid was given: original owner and mode of chowned
    files, and the directories (with their files) it has an ACL entry on."""

    uid: int
    gid: int
    record: Path
    owners: dict[str, tuple[int, int, int]] = field(default_factory=dict)   # path -> uid, gid, mode
    trees: list[tuple[str, bool]] = field(default_factory=list)              # directory, writable

    def give(self, writable: list[str], shared: list[tuple[str, bool]]) -> None:
        """Chown ``writable`` to the VM's uid (readable and writable by it) and
        grant it ``shared`` trees, after writing down how to undo it."""
        for path in dict.fromkeys(writable):
            st = os.stat(path)
            self.owners.setdefault(path, (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)))
        self.trees += shared
        atomic_write(self.record, json.dumps({"uid": self.uid, "gid": self.gid, "owners": self.owners,
                                              "trees": self.trees}))
        for directory, rw in shared:
            acl.grant_tree(directory, self.uid, rw)
        for path, (_, _, mode) in self.owners.items():
            os.chown(path, self.uid, self.gid)
            if mode & (stat.S_IRUSR | stat.S_IWUSR) != stat.S_IRUSR | stat.S_IWUSR:
                os.chmod(path, mode | stat.S_IRUSR | stat.S_IWUSR)

    def take_back(self) -> None:
        """Undo :meth:`give` where it still holds (a file the VM's uid no longer
        owns was changed by someone else since: it is left alone), then drop the record."""
        for directory, _ in self.trees:
            _revoke_tree(directory, self.uid)
        for path, (uid, gid, mode) in self.owners.items():
            try:
                if os.stat(path).st_uid != self.uid:
                    continue
                os.chown(path, uid, gid)
                os.chmod(path, mode)
            except OSError:
                pass                               # gone meanwhile: nothing to give back
        try:
            self.record.unlink()
        except FileNotFoundError:
            pass


def handover_for(lease: ids.IdLease, lock_dir: Path = ids.DEFAULT_LOCK_DIR) -> Handover:
    """The (empty) handover of a freshly allocated id."""
    return Handover(lease.uid, lease.gid, lock_dir / f"{lease.uid}{SUFFIX}")


def take_back_abandoned(lock_dir: Path = ids.DEFAULT_LOCK_DIR) -> list[int]:
    """Give back what VMs whose supervisor died left handed over; the uids done."""
    done = []
    try:
        records = sorted(p for p in lock_dir.iterdir() if p.name.endswith(SUFFIX))
    except OSError:
        return done
    for record in records:
        try:
            uid = int(record.name[: -len(SUFFIX)])
        except ValueError:
            continue
        lease = ids.hold(uid, lock_dir)
        if lease is None:
            continue                               # its VM runs (a VMM outlives nothing it holds)
        try:
            h = _load(record, uid)
            if h is not None:
                h.take_back()
                done.append(uid)
            else:
                record.unlink(missing_ok=True)     # unreadable: written half, before anything was given
        finally:
            lease.release()
    return done


def _load(record: Path, uid: int) -> Handover | None:
    try:
        data = json.loads(record.read_text())
        owners = {str(p): (int(o[0]), int(o[1]), int(o[2])) for p, o in data["owners"].items()}
        trees = [(str(d), bool(w)) for d, w in data["trees"]]
        return Handover(uid, int(data["gid"]), record, owners, trees)
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def _revoke_tree(directory: str, uid: int) -> None:
    acl.revoke(directory, uid)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        p = os.path.join(directory, name)
        if os.path.isfile(p) and not os.path.islink(p):
            acl.revoke(p, uid)
