"""A small synchronous QMP client, for ``kvmkit qmp`` and the benchmarks.

Applications should use the ``qemu.qmp`` library; this exists so the CLI has
no dependency beyond the standard library, and so benchmarks can time QEMU
and kvmkit with the very same client code.  It talks to any QMP server.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from kvmkit.errors import KvmkitError
from kvmkit.monitor.address import QmpAddress, parse_qmp_address
from kvmkit.monitor.protocol import GENERIC_ERROR, QmpError


class QmpConnectionError(KvmkitError):
    """The server could not be reached or closed the connection."""


class QmpClient:
    """Connect, negotiate, run commands; events seen meanwhile are kept in ``events``."""

    def __init__(self, address: str | QmpAddress, timeout: float | None = 30.0) -> None:
        self.address = parse_qmp_address(address) if isinstance(address, str) else address
        self.timeout = timeout
        self.greeting: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self._sock: socket.socket | None = None
        self._file: Any = None
        self._next_id = 0

    def connect(self, negotiate: bool = True) -> dict[str, Any]:
        """Open the connection, read the greeting and (by default) negotiate."""
        a = self.address
        try:
            if a.kind == "unix":
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.timeout)
                sock.connect(a.path)
            else:
                sock = socket.create_connection((a.host, a.port), timeout=self.timeout)
        except OSError as error:
            raise QmpConnectionError(f"cannot connect to QMP at {a}: {error.strerror or error}") \
                from None
        self._sock = sock
        self._file = sock.makefile("rb")
        self.greeting = self._read()
        if negotiate:
            self.command("qmp_capabilities")
        return self.greeting

    def command(self, name: str, arguments: dict[str, Any] | None = None) -> Any:
        """Run one command; returns its ``return`` value or raises :class:`QmpError`."""
        self._next_id += 1
        request: dict[str, Any] = {"execute": name, "id": self._next_id}
        if arguments:
            request["arguments"] = arguments
        self.send_raw(json.dumps(request).encode() + b"\n")
        while True:
            message = self._read()
            if "event" in message:
                self.events.append(message)
            elif message.get("id") == self._next_id or "id" not in message:
                break
        if "error" in message:
            error = message["error"]
            raise QmpError(error.get("desc", ""), error.get("class", GENERIC_ERROR))
        return message.get("return")

    def send_raw(self, data: bytes) -> None:
        assert self._sock is not None, "connect() first"
        try:
            self._sock.sendall(data)
        except OSError as error:
            raise QmpConnectionError(f"QMP connection to {self.address} lost: {error}") from None

    def read_message(self) -> dict[str, Any]:
        """The next message from the server (a reply or an event), as sent."""
        return self._read()

    def _read(self) -> dict[str, Any]:
        try:
            line = self._file.readline()
        except OSError as error:
            raise QmpConnectionError(f"QMP connection to {self.address} lost: {error}") from None
        if not line:
            raise QmpConnectionError(f"QMP server at {self.address} closed the connection")
        return json.loads(line)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "QmpClient":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
