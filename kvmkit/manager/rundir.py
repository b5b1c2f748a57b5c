"""One domain's run directory: what its VMM is doing, read from files.

No daemon holds this state: any manager command reconstructs it.  The VMM
holds ``vmm.lock`` from birth (the manager locks it and hands the locked
descriptor to the child) until death (the kernel drops it), so "is the
lock held" is the liveness test; it cannot be fooled by a recycled pid or
a zombie.  How a dead VMM ended comes from ``exit.json`` (written by the
VMM), and what the manager asked for (``status.json``): a VMM that died
without saying why was killed, and the domain is shut off (crashed).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from kvmkit.manager import files
from kvmkit.manager.locks import is_locked

# exit.json's reason (kvmkit.vmm.api.ExitReason) → libvirt's shut-off reason
SHUTOFF_REASON = {"poweroff": "shutdown", "reboot": "shutdown", "host-quit": "destroyed",
                  "triple-fault": "crashed", "error": "crashed"}
# what the manager stopped a VMM for (status.json's "stopping") → libvirt's shut-off reason
STOPPED_FOR = {"destroy": "destroyed", "save": "saved", "migrate": "migrated", "snapshot": "from snapshot"}


@dataclass(frozen=True)
class RunDir:
    path: Path

    # --- files ----------------------------------------------------------------
    @property
    def vmm_lock(self) -> Path:
        return self.path / "vmm.lock"

    @property
    def status_file(self) -> Path:
        return self.path / "status.json"

    @property
    def live_xml(self) -> Path:
        return self.path / "live.xml"

    @property
    def pid_file(self) -> Path:
        return self.path / "vm.pid"

    @property
    def exit_file(self) -> Path:
        return self.path / "exit.json"

    @property
    def save_area(self) -> Path:
        """Where the VMM writes a saved state before the manager moves it to
        its place: bound writable into a jailed VMM's jail (``--jail-bind``),
        the only host directory it may write besides its disks."""
        return self.path / "saves"

    @property
    def qmp_socket(self) -> Path:
        return self.path / "qmp.sock"

    @property
    def console_socket(self) -> Path:
        return self.path / "console.sock"

    @property
    def console_lock(self) -> Path:
        return self.path / "console.lock"

    @property
    def vsock_socket(self) -> Path:
        return self.path / "vsock.sock"

    # --- state -----------------------------------------------------------------
    def exists(self) -> bool:
        return self.status_file.exists()

    def clear(self) -> None:
        """Forget the last run (its VMM is dead); the lock files stay."""
        keep = {self.vmm_lock.name, self.console_lock.name}
        for entry in os.scandir(self.path):
            if entry.name in keep:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                os.unlink(entry.path)

    def alive(self) -> bool:
        return is_locked(self.vmm_lock)

    def status(self) -> dict:
        return files.read_json(self.status_file, {}) or {}

    def update_status(self, **changes) -> None:
        files.write_json(self.status_file, {**self.status(), **changes})

    def pid(self, wait: float = 0.0) -> int | None:
        """The VMM's pid: from vm.pid, or (if the manager that started it
        died before writing it) the process that holds vmm.lock open."""
        deadline = time.monotonic() + wait
        while True:
            text = _read(self.pid_file)
            if text and text.strip().isdigit():
                return int(text)
            holder = holder_of(self.vmm_lock)
            if holder is not None or time.monotonic() >= deadline:
                return holder
            time.sleep(0.05)

    def end_reason(self) -> str:
        """Why a dead VMM's domain is shut off (libvirt's reason words)."""
        status = self.status()
        if status.get("failed") or (status.get("phase") == "starting" and not self.pid_file.exists()):
            return "failed"
        stopping = status.get("stopping")
        if stopping in STOPPED_FOR:
            return STOPPED_FOR[stopping]
        end = files.read_json(self.exit_file)
        if end is None:
            return "crashed"        # killed before it could say anything
        return SHUTOFF_REASON.get(end.get("reason"), "crashed")

    def end_record(self) -> dict | None:
        return files.read_json(self.exit_file)


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def holder_of(path: Path) -> int | None:
    """A process (other than this one) that has ``path`` open."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                try:
                    fst = os.stat(fd.path)
                except OSError:
                    continue
                if (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino):
                    return int(entry.name)
        except OSError:
            continue
    return None
