"""Where the manager keeps everything, and what each file means.

::

    STATE/
      host.lock               held while names (domains, pools) are added or removed
      next-id                 the next domain id (as libvirt, ids grow and are not reused)
      domains/NAME.xml        persistent definitions
      autostart/NAME          marker: start NAME with `host-autostart`
      run/NAME/               one running (or last-run) VMM:
        status.json             id, start time, persistent?, how it was stopped
        live.xml                the definition it was started from
        vmm.lock                locked by the VMM for its whole life (liveness)
        vm.pid, exit.json       its pid; why it ended (written by `kvmkit run --exit-file`)
        qmp.sock, console.sock, vsock.sock, console.lock
      log/NAME.log            the VMM's stdout and stderr, appended across runs
      locks/NAME.lock         per-domain lock
      pools/NAME.xml          storage pool definitions (libvirt's pool XML), pools/NAME.active
      snapshots/NAME/SNAP.xml snapshot metadata (the disks hold the data)
      journal/ID.json         multi-file operations in flight (clone, snapshot), for recovery

The default is ``/var/lib/kvmkit`` for root and ``$XDG_DATA_HOME/kvmkit``
(``~/.local/share/kvmkit``) otherwise, as libvirt's system and session
instances; ``--connect DIR`` or ``KVMKIT_STATE_DIR`` choose another.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from kvmkit.manager.errors import StorageError

SUBDIRS = ("domains", "autostart", "run", "log", "locks", "pools", "snapshots", "journal", "save")
# libvirt's URIs, so `virsh -c qemu:///system` habits keep working
URIS = {"qemu:///system": "/var/lib/kvmkit", "kvmkit:///system": "/var/lib/kvmkit"}


def default_state_dir() -> Path:
    env = os.environ.get("KVMKIT_STATE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/kvmkit")
    return session_dir()


def session_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "kvmkit"


def resolve_connect(uri: str | None) -> Path:
    """``--connect``: a directory, ``kvmkit://DIR``, or one of libvirt's URIs."""
    if not uri:
        return default_state_dir()
    if uri in URIS:
        return Path(URIS[uri])
    if uri in ("qemu:///session", "kvmkit:///session"):
        return session_dir()
    if uri.startswith("kvmkit://"):
        return Path(uri[len("kvmkit://"):])
    if "://" in uri:
        raise StorageError(f"cannot connect to {uri!r}: kvmkit takes a state directory, "
                           "kvmkit://DIR, qemu:///system or qemu:///session")
    return Path(uri)


@dataclass(frozen=True)
class StateDir:
    root: Path

    @classmethod
    def open(cls, root: str | os.PathLike) -> "StateDir":
        """Create the layout if needed (cheap when it exists)."""
        sd = cls(Path(root).absolute())
        try:
            for sub in SUBDIRS:
                (sd.root / sub).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot use state directory {sd.root}: {e.strerror}") from None
        return sd

    # --- host-wide ---------------------------------------------------------------
    @property
    def host_lock(self) -> Path:
        return self.root / "host.lock"

    @property
    def next_id(self) -> Path:
        return self.root / "next-id"

    def sub(self, name: str) -> Path:
        return self.root / name

    # --- per domain -------------------------------------------------------------------
    def definition(self, name: str) -> Path:
        return self.root / "domains" / f"{name}.xml"

    def autostart(self, name: str) -> Path:
        return self.root / "autostart" / name

    def run_dir(self, name: str) -> Path:
        return self.root / "run" / name

    def log(self, name: str) -> Path:
        return self.root / "log" / f"{name}.log"

    def domain_lock(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    def managed_save(self, name: str) -> Path:
        """The domain's managedsave state (a directory, see :mod:`vmstate`)."""
        return self.root / "save" / name

    def snapshot_dir(self, name: str) -> Path:
        return self.root / "snapshots" / name

    # --- storage ------------------------------------------------------------------------
    def pool(self, name: str) -> Path:
        return self.root / "pools" / f"{name}.xml"

    def pool_active(self, name: str) -> Path:
        return self.root / "pools" / f"{name}.active"

    def journal(self, ident: str) -> Path:
        return self.root / "journal" / f"{ident}.json"
