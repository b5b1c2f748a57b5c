"""Starting and stopping VMMs: every step under the domain's lock, every
record written before the step it describes, so a manager killed anywhere
leaves a domain that is either running (a live VMM holds ``vmm.lock``) or
shut off with a reason.

Steps of a start: claim ``vmm.lock`` (refused if a VMM holds it), clear the
last run, pick the live values (id, vsock CID, tap names), write
``live.xml`` and ``status.json`` (phase ``starting``), spawn the VMM with the
lock, wait until its monitor answers, mark the phase ``running``.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

from kvmkit.manager import files
from kvmkit.manager.domain import DomainDef
from kvmkit.manager.domain_xml import domain_xml
from kvmkit.manager.errors import OperationFailed, OperationInvalid, StorageError
from kvmkit.manager.launch import LiveValues, claim, incoming_argv, restore_argv, spawn, vmm_argv, wait_ready
from kvmkit.manager.locks import locked
from kvmkit.manager.rundir import RunDir
from kvmkit.manager.statedir import StateDir
from kvmkit.manager.vmmlink import qmp

if TYPE_CHECKING:
    from kvmkit.manager.vmstate import SavedState

DESTROY_GRACE = 10.0            # SIGTERM, then SIGKILL after this long (libvirt's virsh destroy)
VSOCK_AUTO_BASE = 3             # an auto CID is 3 + the domain id: unique among running domains


def check_host_files(d: DomainDef) -> None:
    """Everything the VMM will open must be there (libvirt checks at start)."""
    for what, path in [("kernel", d.kernel), ("initrd", d.initrd)] + [("storage file", x.source) for x in d.disks]:
        if path is None:
            continue
        if not os.path.exists(path):
            raise StorageError(f"Cannot access {what} '{path}': No such file or directory")
        if not os.access(path, os.R_OK):
            raise StorageError(f"Cannot access {what} '{path}': Permission denied")


def next_domain_id(sd: StateDir) -> int:
    """Ids grow from 1 and are never reused (as libvirt's)."""
    with locked(sd.host_lock, "the host's domain ids"):
        text = files.read_json(sd.next_id, 1)
        ident = int(text) if isinstance(text, int) else 1
        files.write_json(sd.next_id, ident + 1)
    return ident


def start(sd: StateDir, d: DomainDef, persistent: bool, restore: "SavedState | None" = None,
          reason: str = "booted", paused: bool = False, incoming=None) -> int:
    """Start ``d``'s VMM (caller holds the domain lock); returns the domain id.
    With ``restore``, the VMM continues from that saved state instead of
    booting (``reason`` then says why: restored, from snapshot, migrated;
    whether it is paused is the state's).  ``paused``: boot with the vCPUs
    stopped before their first instruction (``virsh start --paused``)."""
    check_host_files(d)
    bridges = _bridges(sd, d)
    rd = RunDir(sd.run_dir(d.name))
    lock_fd = claim(rd)
    try:
        rd.clear()
        rd.save_area.mkdir(mode=0o700)
        ident = next_domain_id(sd)
        if incoming is not None:        # live migration: the machine (CID, taps) arrives from the source
            saved = incoming.live
            live = LiveValues(ident, saved.vsock.cid if saved.vsock else None,
                              tuple(i.target for i in saved.interfaces), bridges)
            argv = incoming_argv(d, rd, incoming.socket_name)
        elif restore is None:
            live = LiveValues(ident, _vsock_cid(d, ident),
                              tuple(_tap_name(d, ident, i) for i in range(len(d.interfaces))), bridges)
            argv = vmm_argv(d, rd, live) + (["--paused"] if paused else [])
        else:           # the saved machine keeps its CID and taps, and its taps rejoin their bridges
            saved = restore.live
            live = LiveValues(ident, saved.vsock.cid if saved.vsock else None,
                              tuple(i.target for i in saved.interfaces), bridges)
            argv = restore_argv(d, rd, restore.path, restore.paused)
        files.atomic_write(rd.live_xml, domain_xml(d, domain_id=ident, vsock_cid=live.vsock_cid, taps=live.taps))
        # what its "prelaunch" means: a destination waits for the stream; the others start by themselves
        start_paused = incoming is not None or (paused if restore is None else restore.paused)
        files.write_json(rd.status_file, {"id": ident, "phase": "starting", "persistent": persistent,
                                          "reason": reason, "started": time.time(), "pause_reason": "user",
                                          "start_paused": start_paused})
        log = sd.log(d.name)
        pid = spawn(argv, rd, log, lock_fd)
    finally:
        os.close(lock_fd)
    try:
        if incoming is not None:
            incoming.transfer(rd, log)         # the source sends itself; its monitor opens after
        wait_ready(rd, pid, log)
    except BaseException:
        rd.update_status(failed=True)
        _kill(rd, pid)
        raise
    rd.update_status(phase="running")
    _after_start(d, rd, live, restored=restore is not None or incoming is not None)
    return ident


def _vsock_cid(d: DomainDef, ident: int) -> int | None:
    if d.vsock is None:
        return None
    return d.vsock.fixed if d.vsock.fixed is not None else VSOCK_AUTO_BASE + ident


def _tap_name(d: DomainDef, ident: int, index: int) -> str | None:
    nic = d.interfaces[index]
    if nic.target:
        return nic.target
    return f"vnet{ident}n{index}"[:15]


def _bridges(sd: StateDir, d: DomainDef) -> tuple[str | None, ...]:
    """The bridge each interface's tap joins (the VMM joins it before the
    guest runs): a bridge interface's own, a network interface's network's
    (which must be active)."""
    from kvmkit.manager.networks import Networks
    nets = Networks(sd) if any(nic.type == "network" for nic in d.interfaces) else None
    out: list[str | None] = []
    for nic in d.interfaces:
        if nic.type == "bridge":
            out.append(nic.source)
        elif nic.type == "network" and nets is not None:
            out.append(nets.bridge_of(nic.source or ""))
        else:
            out.append(None)
    return tuple(out)


def _after_start(d: DomainDef, rd: RunDir, live: LiveValues, restored: bool = False) -> None:
    if d.balloon and d.current_memory < d.memory and not restored:     # a restored balloon keeps its target
        qmp(rd.qmp_socket, "balloon", {"value": d.current_memory})


def require_running(rd: RunDir) -> None:
    if not rd.alive():
        raise OperationInvalid("domain is not running")


def destroy(rd: RunDir, grace: float = DESTROY_GRACE) -> None:
    """Stop the VMM now (SIGTERM, then SIGKILL), as ``virsh destroy``."""
    require_running(rd)
    rd.update_status(stopping="destroy")
    pid = rd.pid(wait=5.0)
    if pid is None:
        raise OperationFailed("the VMM holds its lock but its pid is unknown")
    _kill(rd, pid, grace)


def _kill(rd: RunDir, pid: int, grace: float = DESTROY_GRACE) -> None:
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
        if not rd.alive():
            return
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while rd.alive() and time.monotonic() < deadline:
            time.sleep(0.02)
    if rd.alive():
        raise OperationFailed(f"the VMM (pid {pid}) did not die")


def monitor_command(rd: RunDir, command: str, arguments: dict | None = None, **status) -> object:
    """A QMP command for a running domain, recording ``status`` changes after it."""
    require_running(rd)
    result = qmp(rd.qmp_socket, command, arguments)
    if status:
        rd.update_status(**status)
    return result


CTRL_ALT_DEL = [{"type": "qcode", "data": k} for k in ("ctrl", "alt", "delete")]


def reboot(rd: RunDir) -> None:
    """``virsh reboot``: Ctrl-Alt-Del on the keyboard controller.  The
    guest's init reboots; with on_reboot=restart the VMM resets in place
    (``kvmkit run --reboot reset``), so the domain keeps running."""
    monitor_command(rd, "send-key", {"keys": CTRL_ALT_DEL})
