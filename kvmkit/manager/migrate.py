"""``virsh migrate NAME URI``: move a running domain to another kvmkit host.

A kvmkit host is a state directory (``kvmkit://DIR``, ``kvmkit:///DIR`` or a
plain path; the same machine, or a directory another machine shares).  The
disks stay where they are: as with libvirt without ``--copy-storage``, both
sides must see the same image paths.

How the state moves is one function, :data:`TRANSFER`.  Today it is
:func:`via_saved_state`: the source pauses, saves its state into the
destination's ``save/`` directory, quits; the destination starts from that
state (downtime = save + restore, RAM written once and mapped back).  Live
migration replaces exactly this function once the VMM has it (the
migration branch): start the destination VMM with ``kvmkit run --incoming
unix:PATH`` (or ``tcp:HOST:PORT``), send QMP ``migrate {"uri": ...}`` to
the source, wait for ``query-migrate`` to say ``completed``, then
:func:`vmstate.quit_vmm` the source with ``migrate`` — the bookkeeping
around it (locks, persistence, undefining the source) stays as it is.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvmkit.manager import lifecycle, vmstate
from kvmkit.manager.domain import DomainDef
from kvmkit.manager.errors import OperationFailed, OperationInvalid
from kvmkit.manager.locks import locked


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
                                   "which the VMM does not have yet")
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


TRANSFER: Callable[[Move], None] = via_saved_state


def migrate(host, name: str, uri: str, persistent: bool, undefine_source: bool):
    from kvmkit.manager.host import Host
    dest = Host(destination(uri))
    if dest.state_dir.resolve() == host.state_dir.resolve():
        raise OperationInvalid("the destination is this state directory")
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
            move = Move(host, dest, name, d, info.persistent)
            TRANSFER(move)
            if persistent:
                with dest.store.host_lock():
                    dest.store.save(d)
                dest._rd(name).update_status(persistent=True)
    if undefine_source and info.persistent:
        host.undefine(name, snapshots_metadata=True, managed_save=True)
    return dest.lookup(name)
