"""Per-VM user and group ids from a configured range.

Every jailed VMM runs as its own unprivileged uid (and gid of the same
number), so a VMM that a guest took over owns nothing but its own VM's
files: another VM's disk and sockets belong to another uid.  An id is held
by an ``flock`` on ``DIR/UID.lock`` for as long as the lease's descriptor
is open; the kernel drops the lock when the holder dies, however it dies, so
a crashed supervisor never leaks an id.  No id in the range may be a real
user of the host (the default range, 200000 up, sits above any normal one).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from kvmkit.errors import ConfigError, HostResourceError, host_error

ENV_RANGE = "KVMKIT_JAIL_IDS"          # BASE:COUNT
DEFAULT_BASE, DEFAULT_COUNT = 200000, 1000
DEFAULT_LOCK_DIR = Path("/run/kvmkit/ids")


@dataclass(frozen=True)
class IdRange:
    """The uids (and equal gids) jailed VMMs may run as: ``base`` .. ``base + count - 1``."""

    base: int = DEFAULT_BASE
    count: int = DEFAULT_COUNT

    @classmethod
    def parse(cls, text: str) -> "IdRange":
        """``BASE:COUNT``, e.g. ``200000:1000``."""
        base, sep, count = text.partition(":")
        try:
            r = cls(int(base), int(count) if sep else DEFAULT_COUNT)
        except ValueError:
            raise ConfigError(f"{ENV_RANGE}={text!r}: expected BASE:COUNT, e.g. 200000:1000") from None
        if r.base < 1000 or r.count < 1 or r.base + r.count > 2 ** 32 - 2:
            raise ConfigError(f"{ENV_RANGE}={text!r}: BASE must be at least 1000 (not a system user), "
                              "COUNT at least 1, and the range below 2^32-2")
        return r

    @classmethod
    def from_env(cls) -> "IdRange":
        text = os.environ.get(ENV_RANGE)
        return cls.parse(text) if text else cls()

    def __str__(self) -> str:
        return f"{self.base}-{self.base + self.count - 1}"


class IdLease:
    """One allocated id; ``release()`` (or the holder's death) frees it."""

    def __init__(self, uid: int, fd: int) -> None:
        self.uid = self.gid = uid
        self._fd = fd

    @property
    def fd(self) -> int:
        """The locked descriptor: a child that inherits it keeps the id taken while it lives."""
        return self._fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def allocate(ids: IdRange | None = None, lock_dir: Path = DEFAULT_LOCK_DIR) -> IdLease:
    """The lowest free id of the range, locked for the caller."""
    ids = ids or IdRange.from_env()
    try:
        lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise host_error(f"VM id locks in {lock_dir}", exc) from None
    for uid in range(ids.base, ids.base + ids.count):
        lease = hold(uid, lock_dir)
        if lease is not None:
            return lease
    raise HostResourceError(f"no free VM user id: all {ids.count} of {ids} are in use by running VMs "
                            f"(widen the range with {ENV_RANGE}=BASE:COUNT)")


def hold(uid: int, lock_dir: Path = DEFAULT_LOCK_DIR) -> IdLease | None:
    """A lease on ``uid`` if no one holds it (its lock directory must exist), else None."""
    try:
        fd = os.open(lock_dir / f"{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise host_error(f"VM id lock {lock_dir / f'{uid}.lock'}", exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return IdLease(uid, fd)
