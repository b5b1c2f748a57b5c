"""Fixtures for the QMP monitor tests: a running VM, a server on it, raw clients."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from kvmkit.monitor.server import QmpServer


class GuestVm:
    """A VmControl plus a way to read the guest's progress counter."""

    def __init__(self, control: Any, progress: Callable[[], int]) -> None:
        self.control = control
        self.progress = progress


COUNTER_ADDR = 0x5000      # where the "counter" tiny guest keeps its u64


@pytest.fixture
def vm(tiny_guest: Callable[[str], Path], machine: Callable[..., Any]) -> GuestVm:
    """A real Machine running the "counter" guest (closed by the machine fixture)."""
    m = machine(tiny_guest("counter"), name="qmp-test")
    deadline = time.monotonic() + 10
    while b"counter running" not in bytes(m.debug_output):
        assert time.monotonic() < deadline, "counter guest did not start"
        time.sleep(0.001)
    return GuestVm(m, lambda: m.memory.read_u64(COUNTER_ADDR))


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory for unix sockets (sun_path is limited to 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="qmp-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def server(vm: GuestVm, sock_dir: Path) -> Iterator[QmpServer]:
    with QmpServer(vm.control, f"unix:{sock_dir / 'qmp.sock'}") as srv:
        yield srv


class RawQmp:
    """A byte-level client, for the error paths qemu.qmp would never produce."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        self.file = self.sock.makefile("rb")
        self.greeting = self.recv()

    def send(self, data: bytes | str | dict) -> None:
        if isinstance(data, dict):
            data = json.dumps(data) + "\n"
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def recv(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        assert line.endswith(b"\r\n")
        return json.loads(line)

    def reply(self) -> dict[str, Any]:
        """The next message that is not an event."""
        while "event" in (message := self.recv()):
            pass
        return message

    def call(self, data: bytes | str | dict) -> dict[str, Any]:
        self.send(data)
        return self.reply()

    def negotiate(self) -> "RawQmp":
        assert self.call({"execute": "qmp_capabilities"}) == {"return": {}}
        return self

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest.fixture
def raw(server: QmpServer) -> Iterator[Callable[[], RawQmp]]:
    clients: list[RawQmp] = []

    def connect() -> RawQmp:
        clients.append(RawQmp(server.address.path))
        return clients[-1]

    yield connect
    for client in clients:
        client.close()
