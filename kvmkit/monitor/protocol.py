"""QMP's wire shapes: greeting, replies, errors, events, request checks.

Everything here follows QEMU 7.2 byte for byte where clients can see it
(``docs/interop/qmp-spec.rst``, ``qapi/qmp-dispatch.c``, ``monitor/qmp.c``):
existing clients match on error classes and sometimes on descriptions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from kvmkit.vmm.api import VmEvent

GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_FOUND = "DeviceNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"

NEGOTIATION_REQUIRED = "Expecting capabilities negotiation with 'qmp_capabilities'"


class QmpError(Exception):
    """A command failure as QMP reports it: an error class and a description."""

    def __init__(self, desc: str, error_class: str = GENERIC_ERROR) -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class

    def to_json(self) -> dict[str, str]:
        return {"class": self.error_class, "desc": self.desc}


@dataclass(frozen=True)
class VersionInfo:
    """What ``query-version`` and the greeting report.

    kvmkit claims the QEMU version whose QMP schema it follows, so clients that
    gate features on the QEMU version take the paths kvmkit implements.
    """

    major: int = 7
    minor: int = 2
    micro: int = 0
    package: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"qemu": {"micro": self.micro, "minor": self.minor, "major": self.major},
                "package": self.package}


@dataclass(frozen=True)
class Request:
    """A request that passed the envelope checks."""

    command: str
    arguments: dict[str, Any]
    id: Any = None
    has_id: bool = False


def check_request(message: Any) -> Request:
    """Validate a request envelope exactly as QEMU's ``qmp_dispatch_check_obj``.

    Raises :class:`QmpError`; the caller still echoes ``id`` (see
    :func:`request_id`), as QEMU does for envelope errors.
    """
    if not isinstance(message, dict):
        raise QmpError("QMP input must be a JSON object")
    for key, value in message.items():
        if key == "execute":
            if not isinstance(value, str):
                raise QmpError("QMP input member 'execute' must be a string")
        elif key == "arguments":
            if not isinstance(value, dict):
                raise QmpError("QMP input member 'arguments' must be an object")
        elif key != "id":       # includes exec-oob: out-of-band is not offered
            raise QmpError(f"QMP input member '{key}' is unexpected")
    if "execute" not in message:
        raise QmpError("QMP input lacks member 'execute'")
    return Request(message["execute"], message.get("arguments", {}),
                   message.get("id"), "id" in message)


def request_id(message: Any) -> tuple[bool, Any]:
    """``(present, id)`` of a message, whatever else is wrong with it."""
    if isinstance(message, dict) and "id" in message:
        return True, message["id"]
    return False, None


def greeting(version: VersionInfo, capabilities: list[str] | None = None) -> dict[str, Any]:
    return {"QMP": {"version": version.to_json(), "capabilities": list(capabilities or [])}}


def success(value: Any, has_id: bool = False, id: Any = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"return": {} if value is None else value}
    if has_id:
        reply["id"] = id
    return reply


def failure(error: QmpError, has_id: bool = False, id: Any = None) -> dict[str, Any]:
    reply: dict[str, Any] = {"error": error.to_json()}
    if has_id:
        reply["id"] = id
    return reply


def event_message(event: VmEvent) -> dict[str, Any]:
    """QEMU's event shape; like QEMU, ``data`` is left out when there is none."""
    seconds = int(event.timestamp)
    micro = int(round((event.timestamp - seconds) * 1_000_000))
    if micro >= 1_000_000:
        seconds, micro = seconds + 1, micro - 1_000_000
    message: dict[str, Any] = {"event": event.name}
    if event.data:
        message["data"] = event.data
    message["timestamp"] = {"seconds": seconds, "microseconds": micro}
    return message


def encode(message: dict[str, Any]) -> bytes:
    """One message on the wire: compact JSON ended by CRLF, as QEMU writes it."""
    return json.dumps(message, ensure_ascii=False).encode() + b"\r\n"
