"""``virsh migrate NAME URI``: move a running domain to another kvmkit host.

A kvmkit host is a state directory (``kvmkit://DIR``, ``kvmkit:///DIR`` or a
plain path; the same machine, or a directory another machine shares).  The
disks stay where they are: as with libvirt without ``--copy-storage``, both
sides must see the same image paths.

How the state moves is one function, :data:`TRANSFER`: :func:`live`, QEMU's
live migration.  The destination's Host starts a VMM with ``kvmkit run
--incoming unix:incoming.sock`` (in its run directory; jailed, its
supervisor listens and hands the stream over), the source gets QMP
``migrate`` and pre-copies while the guest runs, stops for the last dirty
pages and the device state (the downtime, in the destination's log), and
ends in ``postmigrate``; then it is quit.  A jailed source sees no host
path but its own save area, so the destination's socket is hard-linked
into it; where the two state directories are on different file systems
(no hard link) the move falls back to :func:`via_saved_state` (pause, save
into the destination's ``save/``, quit, restore there).  Either way the
bookkeeping around it (locks, persistence, undefining the source) is the
same.

The move is journalled on the source (``migrate`` intent record): a manager
killed mid-migration leaves both VMMs to themselves, and recovery (the
consistency check, or the next migrate, clone or snapshot) settles where
the guest is.  A source in ``postmigrate`` sent everything: it is quit and
the destination keeps the guest (made persistent there if asked); a source
still migrating is cancelled, and a source that runs keeps the guest: a
destination VMM still waiting for (or part way through) the stream is
destroyed.  Either way one VMM runs the guest afterwards, never two.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvmkit.manager import journal, launch, lifecycle, vmstate
from kvmkit.manager.domain_parse import parse_domain
from kvmkit.manager.domain import DomainDef
from kvmkit.manager.domain_xml import domain_xml
from kvmkit.manager.errors import OperationFailed, OperationInvalid
from kvmkit.manager.locks import locked
from kvmkit.manager.rundir import RunDir
from kvmkit.manager.statedir import StateDir
from kvmkit.manager.vmmlink import qmp


@dataclass(frozen=True)
class Move:
    """One migration: what both ends need to move domain ``name``."""

    source: object                # kvmkit.Host (the one the command runs on)
    dest: object                  # kvmkit.Host of the destination state directory
    name: str
    definition: DomainDef         # what the destination runs (the source's live definition)
    persistent_source: bool


def destination(uri: str) -> Path:
    """The destination state directory named by ``uri``."""
    for scheme in ("kvmkit://", "file://"):
        if uri.startswith(scheme):
            uri = uri[len(scheme):]
            break
    else:
        if "://" in uri:
            raise OperationInvalid(f"cannot migrate to '{uri}': kvmkit migrates to another kvmkit state "
                                   "directory (kvmkit://DIR or a path); network URIs need live migration, "
                                   "which the manager does only between state directories")
    if not uri:
        raise OperationInvalid("the destination URI names no state directory")
    return Path(uri)


def via_saved_state(move: Move) -> None:
    """Save → restore through a state directory in the destination."""
    staging = move.dest.sd.sub("save") / f"{move.name}.migrating-{os.getpid()}"
    vmstate.save_and_quit(move.source.sd, move.name, staging, "migrate")
    state = vmstate.open_state(staging)
    try:
        lifecycle.start(move.dest.sd, move.definition, persistent=False, restore=state, reason="migrated")
    except BaseException as e:                  # the destination refused: the source continues
        try:
            lifecycle.start(move.source.sd, move.definition, persistent=move.persistent_source,
                            restore=state, reason="restored")
        finally:
            vmstate.remove_tree(staging)
        raise OperationFailed(f"the destination could not start the domain (it runs on the source again): "
                              f"{e}") from None
    vmstate.remove_tree(staging)                # both VMMs done with it: the new one maps its memory


INCOMING_SOCKET = "incoming.sock"
MIGRATE_TIMEOUT = 600.0


@dataclass
class _LiveIncoming:
    """What :func:`lifecycle.start` needs to start a migration's destination."""

    live: DomainDef                # the source's live definition (vsock CID, tap names)
    source: RunDir
    socket_name: str = INCOMING_SOCKET
    summary: str = ""

    def transfer(self, rd: RunDir, log: Path) -> None:
        """The destination VMM is starting in ``rd``: once it listens, make
        the source send itself, and wait until it has."""
        sock = rd.path / self.socket_name
        deadline = time.monotonic() + launch.START_TIMEOUT
        while not sock.exists():
            if not rd.alive():
                raise OperationFailed(f"the destination VMM exited while starting: {launch.log_tail(log)}")
            if time.monotonic() > deadline:
                raise OperationFailed("the destination VMM did not listen for the migration")
            time.sleep(0.02)
        link = self.source.save_area / "migrate.sock"     # inside the source's jail too
        if link.exists() or link.is_symlink():
            link.unlink()
        os.link(sock, link)
        try:
            owner = self.source.save_area.stat()
            os.chown(link, owner.st_uid, owner.st_gid)      # a jailed source connects as its VM user
            qmp(self.source.qmp_socket, "migrate", {"uri": f"unix:{link.parent.name}/{link.name}"})
            info = self._wait()
        finally:
            try:
                link.unlink()
            except OSError:
                pass
        ram = info.get("ram", {})
        self.summary = (f"migrated live: {ram.get('transferred', 0) >> 20} MiB in {info.get('total-time', 0)} ms, "
                        f"downtime {info.get('downtime', 0)} ms")
        with open(log, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {self.summary}\n")

    def _wait(self) -> dict:
        deadline = time.monotonic() + MIGRATE_TIMEOUT
        while True:
            info = qmp(self.source.qmp_socket, "query-migrate")
            status = info.get("status")
            if status == "completed":
                return info
            if status in ("failed", "cancelled"):
                raise OperationFailed(f"the migration {status} (the domain runs on the source): "
                                      f"{info.get('error-desc', 'no reason given')}")
            if time.monotonic() > deadline:
                qmp(self.source.qmp_socket, "migrate_cancel")
                raise OperationFailed(f"the migration did not complete in {MIGRATE_TIMEOUT:g} s (cancelled)")
            time.sleep(0.02)


def _same_file_system(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def live(move: Move) -> None:
    """Live migration (see the module docstring); save → restore where a
    hard link cannot reach a jailed source."""
    src = move.source._rd(move.name)
    dest_run = move.dest.sd.run_dir(move.name)
    dest_run.mkdir(parents=True, exist_ok=True)
    if not src.save_area.is_dir() or not _same_file_system(src.save_area, dest_run):
        return via_saved_state(move)
    live_def = parse_domain(src.live_xml.read_text(), str(src.live_xml))
    incoming = _LiveIncoming(live_def, src)
    lifecycle.start(move.dest.sd, move.definition, persistent=False, reason="migrated", incoming=incoming)
    vmstate.quit_vmm(src, "migrate")


TRANSFER: Callable[[Move], None] = live


def migrate(host, name: str, uri: str, persistent: bool, undefine_source: bool):
    from kvmkit.manager.host import Host
    dest = Host(destination(uri))
    if dest.state_dir.resolve() == host.state_dir.resolve():
        raise OperationInvalid("the destination is this state directory")
    journal.recover(host.sd)
    with journal.intent(host.sd, "migrate", domain=name, dest=str(dest.sd.root), persistent=persistent,
                        undefine_source=undefine_source) as rec:
        with locked(host.sd.domain_lock(name), f"domain '{name}'"):
            info = host.lookup(name)
            if not info.active:
                raise OperationInvalid("domain is not running")
            with locked(dest.sd.domain_lock(name), f"domain '{name}' at the destination"):
                if dest._rd(name).alive():
                    raise OperationInvalid(f"domain '{name}' is already active at the destination")
                with dest.store.host_lock():
                    dest.store.check_unique(info.definition, dest._transient_uuids())
                d = host.store.load(name) if info.persistent else info.definition
                rec.note("xml", domain_xml(d))          # before the destination starts: recovery needs it
                TRANSFER(Move(host, dest, name, d, info.persistent))
                if persistent:
                    _persist_at(dest.sd, d)
        if undefine_source and info.persistent:
            host.undefine(name, snapshots_metadata=True, managed_save=True)
    return dest.lookup(name)


def _persist_at(dest: StateDir, d: DomainDef) -> None:
    from kvmkit.manager.store import DefinitionStore
    store = DefinitionStore(dest)
    with store.host_lock():
        store.save(d)
    RunDir(dest.run_dir(d.name)).update_status(persistent=True)


@journal.handler("migrate")
def _recover(sd: StateDir, data: dict) -> None:
    """Settle an interrupted migration (see the module docstring)."""
    name = data["domain"]
    if not data.get("xml"):
        return                                         # ended before the destination was started
    src = RunDir(sd.run_dir(name))
    dest = StateDir.open(data["dest"])
    dest_rd = RunDir(dest.run_dir(name))
    if _status(src) is not None and not _sent_everything(src):
        if dest_rd.alive():
            lifecycle.destroy(dest_rd)                 # it never got (all of) the guest
        return
    if src.alive():
        vmstate.quit_vmm(src, "migrate")               # postmigrate: the guest runs at the destination
    if _status(dest_rd) in (None, "inmigrate"):
        if dest_rd.alive():
            lifecycle.destroy(dest_rd)                 # the source is gone and this one has no guest
        return
    d = parse_domain(data["xml"][-1], f"journal record of migrate {name}")
    if data.get("persistent"):
        _persist_at(dest, d)
    if data.get("undefine_source") and sd.definition(name).exists():
        from kvmkit.manager.host import Host
        Host(sd.root).undefine(name, snapshots_metadata=True, managed_save=True)


SETTLE_TIMEOUT = 30.0          # how long a VMM may take to open or close its monitor
MIGRATING = ("setup", "active", "device", "pre-switchover", "cancelling")


def _status(rd: RunDir) -> str | None:
    """The VMM's run status, or None if it is not running: a VMM that is
    alive but has no monitor (starting, loading a stream, or quitting) is
    waited for until it has one or has ended."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while rd.alive():
        try:
            return qmp(rd.qmp_socket, "query-status", timeout=2.0)["status"]
        except OperationFailed:
            if time.monotonic() > deadline:
                raise OperationFailed(f"the VMM in {rd.path} is alive but its monitor does not answer") from None
            time.sleep(0.05)
    return None


def _sent_everything(src: RunDir) -> bool:
    """True once the source is in postmigrate; a migration still running
    without its manager is cancelled first (the guest then stays here)."""
    try:
        if qmp(src.qmp_socket, "query-migrate").get("status") in MIGRATING:
            qmp(src.qmp_socket, "migrate_cancel")
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while qmp(src.qmp_socket, "query-migrate").get("status") in MIGRATING:
                if time.monotonic() > deadline:
                    raise OperationFailed("the source's migration did not stop after migrate_cancel")
                time.sleep(0.05)
    except OperationFailed:
        if src.alive():
            raise
    return _status(src) in (None, "postmigrate")        # None: it quit after sending (or ended)
