"""The one small API that control planes (QMP, the CLI, the manager) use to
steer a running VM.  They never reach into devices or vCPUs directly.

:class:`kvmkit.vmm.machine.Machine` implements :class:`VmControl`.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol


class RunState(str, enum.Enum):
    """QEMU's RunState names, so QMP's query-status answers unchanged."""

    PRELAUNCH = "prelaunch"
    RUNNING = "running"
    PAUSED = "paused"
    SHUTDOWN = "shutdown"
    INTERNAL_ERROR = "internal-error"
    GUEST_PANICKED = "guest-panicked"
    POSTMIGRATE = "postmigrate"  # migrated away: stopped here, running on the destination
    INMIGRATE = "inmigrate"      # waiting for an incoming migration stream


class ExitReason(str, enum.Enum):
    """Why a VM stopped for good; the CLI maps these to exit statuses."""

    POWEROFF = "poweroff"        # guest powered off (ACPI/exit port/KVM system event)
    REBOOT = "reboot"            # guest asked for a reset (i8042, KVM system event) and the VM was not set to reboot in place
    TRIPLE_FAULT = "triple-fault"
    HOST_QUIT = "host-quit"      # QMP quit, Ctrl-a x, SIGTERM
    ERROR = "error"              # the VMM could not continue (see Machine.error)


@dataclass(frozen=True)
class VmEvent:
    """An asynchronous event, shaped like QMP's: name + data + timestamp."""

    name: str                    # e.g. "STOP", "RESUME", "RESET", "SHUTDOWN", "POWERDOWN"
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)


class VmControl(Protocol):
    name: str | None
    uuid: str

    @property
    def state(self) -> RunState: ...

    def pause(self) -> None:
        """Stop every vCPU (all out of KVM_RUN, none re-entering) before returning; emits STOP."""

    def resume(self) -> None:
        """Restart the vCPUs; emits RESUME."""

    def reset(self) -> None:
        """Hard reset (QMP system_reset); emits RESET."""

    def powerdown(self) -> None:
        """Ask the guest to shut down (ACPI button or Ctrl-Alt-Del); emits POWERDOWN."""

    def send_keys(self, scancodes: bytes) -> None:
        """Queue PC set-1 scancodes on the keyboard controller (QMP send-key)."""

    def quit(self) -> None:
        """Stop the VM for good (QMP quit); emits SHUTDOWN with reason host-qmp-quit."""

    def subscribe(self, callback: Callable[[VmEvent], None]) -> Callable[[], None]:
        """Call ``callback`` (from any thread) for every event; returns an unsubscribe function."""

    def query_cpus(self) -> list[dict[str, Any]]:
        """One dict per vCPU: cpu-index, thread-id, qom-path, target, props."""

    def cpu_registers(self, cpu_index: int) -> dict[str, int]:
        """General, segment and control registers of one vCPU (paused or not)."""

    def query_block(self) -> list[dict[str, Any]]:
        """QMP query-block entries for the VM's disks."""

    def internal_disk_snapshot(self, device: str, name: str, delete: bool = False) -> None:
        """Create (or delete) a qcow2 internal snapshot in one open disk."""

    def savevm(self, directory: str, name: str) -> Any:
        """The VM state into ``directory`` and the internal snapshot ``name``
        in every writable disk, in one paused moment (a SnapshotInfo)."""

    def query_balloon(self) -> dict[str, Any] | None:
        """``{"actual": guest RAM bytes minus the balloon}``; None without a balloon device."""

    def balloon(self, target_bytes: int) -> bool:
        """Ask the guest to keep ``target_bytes`` of RAM; False without a balloon device."""

    def query_stats(self) -> dict[str, Any]:
        """kvmkit's counters: exits, and what host-compat completed in the VMM."""

    @property
    def migration(self) -> Any:
        """The VM's :class:`kvmkit.vmm.migration.source.MigrationControl`
        (start, query, cancel a migration; its parameters)."""

    def save_snapshot(self, directory: str, diff_from: str | None = None) -> Any:
        """Write the whole VM into ``directory`` (a running VM pauses for the
        copy and continues), or only the pages dirtied since ``diff_from``
        (the VM's last snapshot); returns a :class:`kvmkit.vmm.snapshot.SnapshotInfo`."""
