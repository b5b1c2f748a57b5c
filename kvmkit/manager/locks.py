"""Advisory locks with ``flock``: one per domain, one for the host's names.

``flock`` locks belong to an open file description, so two threads of one
process exclude each other as two processes do, and the kernel drops a lock
when its holder dies: a SIGKILLed manager can never leave a stale lock.
Lock files are never deleted (deleting a lock file races with someone about
to lock it); they are empty and cost nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from kvmkit.manager.errors import OperationFailed

DEFAULT_TIMEOUT = 60.0


@contextlib.contextmanager
def locked(path: Path, what: str, timeout: float = DEFAULT_TIMEOUT, shared: bool = False) -> Iterator[int]:
    """Hold ``path``'s lock for the ``with`` block (waiting up to ``timeout`` s)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        mode = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, mode)
                break
            except OSError as e:
                if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                if time.monotonic() >= deadline:
                    raise OperationFailed(f"timed out after {timeout:g}s waiting for the lock on {what}") from None
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        yield fd
    finally:
        os.close(fd)


def is_locked(path: Path) -> bool:
    """Does anyone hold ``path``'s lock right now?  (Used on the lock a VMM
    holds for its whole life: the liveness test that cannot be fooled by a
    recycled pid or a zombie.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    finally:
        os.close(fd)


def try_lock(path: Path, wait: float = 0.5) -> int | None:
    """An fd holding ``path``'s exclusive lock, or None if someone still
    holds it after ``wait`` seconds (an :func:`is_locked` probe holds it for
    microseconds; a VMM holds it for its life)."""
    try:
        with contextlib.ExitStack() as stack:
            fd = stack.enter_context(locked(path, str(path), timeout=wait))
            dup = os.dup(fd)
    except OperationFailed:
        return None
    os.set_inheritable(dup, False)
    return dup
