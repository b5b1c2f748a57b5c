"""Intent records for operations that touch several files (clone, snapshot).

Before an operation creates or changes a file it writes down what it is
about to do (``journal/ID.json``, atomically); its last step is the one
atomic write that makes the result real (a new definition, a snapshot's
metadata); then the record goes.  A manager killed in between leaves the
record, and :func:`recover` — run by the consistency check and before the
next such operation — finishes or undoes the work: the operation's own
module says which (``ROLLBACK`` handlers, keyed by the record's ``op``).

The record's ``ID.lock`` is held for as long as its operation runs, so
recovery never touches the work of an operation still in progress.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from kvmkit.manager import files
from kvmkit.manager.locks import try_lock
from kvmkit.manager.statedir import StateDir

Handler = Callable[[StateDir, dict[str, Any]], None]
HANDLERS: dict[str, Handler] = {}


def handler(op: str) -> Callable[[Handler], Handler]:
    """Register how to finish or undo an interrupted ``op``."""
    def register(fn: Handler) -> Handler:
        HANDLERS[op] = fn
        return fn
    return register


class Record:
    def __init__(self, sd: StateDir, ident: str, data: dict[str, Any]) -> None:
        self.sd, self.ident, self.data = sd, ident, data

    def note(self, key: str, value: Any) -> None:
        """Append ``value`` to the list ``key`` (durably, before the step it names)."""
        self.data.setdefault(key, []).append(value)
        files.write_json(self.sd.journal(self.ident), self.data)


@contextmanager
def intent(sd: StateDir, op: str, **data: Any) -> Iterator[Record]:
    """Hold an intent record for the block; it is removed only on success
    (a failure leaves it for :func:`recover`, which runs at once)."""
    ident = uuid.uuid4().hex[:12]
    lock_path = sd.journal(ident).with_suffix(".lock")
    fd = try_lock(lock_path, wait=0)
    assert fd is not None
    record = Record(sd, ident, {"op": op, **data})
    try:
        files.write_json(sd.journal(ident), record.data)
        yield record
        files.remove(sd.journal(ident))
    except BaseException:
        os.close(fd)
        fd = -1
        try:
            _recover_one(sd, ident)          # undo what the failed operation did
        except Exception:
            pass                             # left for the consistency check
        raise
    finally:
        if fd >= 0:
            os.close(fd)
    lock_path.unlink(missing_ok=True)


def pending(sd: StateDir) -> list[str]:
    return sorted(e.name[:-5] for e in os.scandir(sd.sub("journal"))
                  if e.name.endswith(".json") and not files.is_temporary(e.name))


def in_progress(sd: StateDir, ident: str) -> bool:
    fd = try_lock(sd.journal(ident).with_suffix(".lock"), wait=0)
    if fd is None:
        return True
    os.close(fd)
    return False


def recover(sd: StateDir) -> list[str]:
    """Finish or undo every interrupted operation; returns what was done."""
    done = []
    for ident in pending(sd):
        what = _recover_one(sd, ident)
        if what:
            done.append(what)
    for e in os.scandir(sd.sub("journal")):
        if e.name.endswith(".lock") and not sd.journal(e.name[:-5]).exists():
            fd = try_lock(sd.journal(e.name[:-5]).with_suffix(".lock"), wait=0)
            if fd is not None:
                os.close(fd)
                os.unlink(e.path)
    return done


def _recover_one(sd: StateDir, ident: str) -> str | None:
    from kvmkit.manager import clone, migrate, snapshots, vmstate  # noqa: F401  (they register their handlers)
    lock_path = sd.journal(ident).with_suffix(".lock")
    fd = try_lock(lock_path, wait=0)
    if fd is None:
        return None                          # still running
    try:
        data = files.read_json(sd.journal(ident))
        if data is None:
            return None
        HANDLERS[data["op"]](sd, data)
        files.remove(sd.journal(ident))
        return f"recovered an interrupted {data['op']} ({ident})"
    finally:
        os.close(fd)
