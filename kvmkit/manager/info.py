"""What a domain is right now, gathered from its definition and run dir.

virsh's words throughout: states ``running``, ``paused``, ``shut off``;
reasons ``booted``, ``unpaused``, ``user``, ``shutdown``, ``destroyed``,
``crashed``, ``failed``, ``unknown``.  A running domain's state is asked of
its VMM (QMP query-status), so a guest paused by an error is seen as paused.
A VMM still in ``prelaunch`` is paused only if it was started paused: one
whose starting manager was killed runs on by itself and is running.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kvmkit.manager.domain import DomainDef
from kvmkit.manager.domain_parse import parse_domain
from kvmkit.manager.errors import OperationFailed
from kvmkit.manager.rundir import RunDir
from kvmkit.manager.vmmlink import qmp

RUNNING_REASONS = ("booted", "unpaused", "restored", "from snapshot", "migrated")
QMP_STATE = {"running": "running", "paused": "paused", "prelaunch": "paused", "shutdown": "in shutdown",
             "internal-error": "paused", "guest-panicked": "paused"}


@dataclass(frozen=True)
class DomainInfo:
    """One domain as ``virsh dominfo`` sees it."""

    name: str
    uuid: str
    id: int | None                   # None when shut off
    state: str
    reason: str
    persistent: bool
    autostart: bool
    definition: DomainDef            # the live one while running
    pid: int | None = None
    managed_save: bool = False       # a managedsave state waits for the next start

    @property
    def active(self) -> bool:
        return self.id is not None

    def cpu_time(self) -> float:
        """Seconds of host CPU the VMM has used (utime + stime)."""
        if self.pid is None:
            return 0.0
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0


def live_info(rd: RunDir, persistent: bool, autostart: bool, config: DomainDef | None) -> DomainInfo | None:
    """The info of a domain whose VMM is alive, or None if it is not."""
    if not rd.alive():
        return None
    status = rd.status()
    try:
        live = parse_domain(rd.live_xml.read_text(), str(rd.live_xml))
    except (OSError, Exception):              # mid-start: the live XML is written before the spawn
        if config is None:
            return None
        live = config
    state, reason = "running", status.get("reason", "booted")
    try:
        qstate = qmp(rd.qmp_socket, "query-status", timeout=2.0)["status"]
        state = QMP_STATE.get(qstate, "running")
        if qstate == "prelaunch" and not status.get("start_paused", True):
            state = "running"                 # between its monitor opening and its vCPUs starting, by itself
        if state == "paused":
            reason = status.get("pause_reason", "user")
        elif reason not in RUNNING_REASONS:
            reason = "booted"
    except OperationFailed:
        pass                                  # starting up, or hung: still running as far as we know
    return DomainInfo(live.name, live.uuid, status.get("id"), state, reason, persistent, autostart,
                      live, rd.pid())


def shutoff_info(rd: RunDir, config: DomainDef, autostart: bool) -> DomainInfo:
    reason = rd.end_reason() if rd.exists() else "unknown"
    return DomainInfo(config.name, config.uuid, None, "shut off", reason, True, autostart, config)
