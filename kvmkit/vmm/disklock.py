"""One writer per disk image: a VM holds an exclusive ``flock`` on every
disk it may write, for as long as it runs.

Two VMs writing one image corrupt it (each caches its own view of the
file system, and qcow2 metadata is rewritten in place).  The way this
happens by accident is restoring one snapshot twice, or restoring it while
its source still runs: the second is refused with a message that names the
disk and the way out (``--clone``: linked clones).  Like QEMU's image
locking, but with ``flock``, so it does not stop ``qemu-img`` from reading.
"""

from __future__ import annotations

import fcntl
import os
from typing import Iterable

from kvmkit.errors import ConfigError


class DiskLocks:
    """Exclusive locks on ``paths``, taken all or none; ``release`` drops them."""

    def __init__(self, paths: Iterable[str]) -> None:
        self._fds: list[int] = []
        try:
            for path in paths:
                self._take(path)
        except BaseException:
            self.release()
            raise

    def _take(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return                  # opening the image reports it, with the option's name
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"disk {path} is in use by another running VM: two writers would corrupt "
                              "it (restore a snapshot more than once with --clone, which gives each "
                              "VM a linked clone)") from None
        self._fds.append(fd)

    def release(self) -> None:
        while self._fds:
            os.close(self._fds.pop())
