"""The manager's one channel to a running VMM: its QMP socket.

As libvirt drives QEMU, the manager never touches a VM's memory or devices;
everything it asks goes through QMP, so a manager bug cannot corrupt a
running guest.  Each call opens a connection and closes it: a manager
command is short-lived and the VMM outlives it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kvmkit.manager.errors import OperationFailed
from kvmkit.manager.sockpath import short_path

QMP_TIMEOUT = 10.0


def qmp(socket_path: Path, command: str, arguments: dict[str, Any] | None = None,
        timeout: float = QMP_TIMEOUT) -> Any:
    """Run one QMP command; its ``return`` value."""
    from kvmkit.monitor.client import QmpClient, QmpConnectionError
    from kvmkit.monitor.protocol import QmpError
    with short_path(socket_path) as path:
        try:
            with QmpClient(f"unix:{path}", timeout=timeout) as client:
                return client.command(command, arguments)
        except QmpConnectionError as e:
            raise OperationFailed(f"cannot reach the VMM's monitor: {e}") from None
        except QmpError as e:
            raise OperationFailed(f"the VMM refused {command}: {e.desc}") from None
        except OSError as e:                       # a timeout mid-reply
            raise OperationFailed(f"the VMM's monitor did not answer {command}: {e}") from None


def qmp_raw(socket_path: Path, message: dict[str, Any], timeout: float = QMP_TIMEOUT) -> dict[str, Any]:
    """Send one message as given (``qemu-monitor-command``) and return the
    whole reply (``return`` or ``error``, and the ``id``), skipping events."""
    from kvmkit.monitor.client import QmpClient, QmpConnectionError
    with short_path(socket_path) as path:
        try:
            with QmpClient(f"unix:{path}", timeout=timeout) as client:
                client.send_raw(json.dumps(message).encode() + b"\n")
                while True:
                    reply = client.read_message()
                    if "event" not in reply:
                        return reply
        except QmpConnectionError as e:
            raise OperationFailed(f"cannot reach the VMM's monitor: {e}") from None


def reachable(socket_path: Path, timeout: float = 1.0) -> bool:
    """Does the monitor answer (the VMM is up and serving)?"""
    try:
        qmp(socket_path, "query-status", timeout=timeout)
        return True
    except OperationFailed:
        return False
