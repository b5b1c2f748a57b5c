"""A client of a VMM's serial console on a unix socket (``<serial
type='unix'>`` / ``--serial unix:PATH``), with :class:`PtyConsole`'s
``expect`` and ``shell``: for tests (and the network benchmark) that drive
several guests at their prompts."""

from __future__ import annotations

import socket
import threading
import time

try:
    from .helpers import PtyConsole
except ImportError:                     # imported as a plain module (bench/)
    from helpers import PtyConsole      # type: ignore[no-redef]

PROMPT = rb"root@kvmkit:[^\n]*# "


class _Connection:
    """Stands in for PtyConsole's process: the console ends when the socket does."""

    @staticmethod
    def poll() -> int:
        return 0


class SocketConsole(PtyConsole):
    def __init__(self, path: str, timeout: float = 60.0) -> None:   # noqa: D107 - no process to start
        deadline = time.monotonic() + timeout
        while True:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.master = self.sock.fileno()          # PtyConsole reads and writes this fd
        self.proc = _Connection()
        self.buf = b""
        self._cursor = 0
        self._lock = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
