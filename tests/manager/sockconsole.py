"""A client of a VMM's serial console on a unix socket (``<serial
type='unix'>`` / ``--serial unix:PATH``): collects what the guest prints and
runs shell commands at its prompt, for tests that drive several guests."""

from __future__ import annotations

import re
import socket
import threading
import time

PROMPT = rb"root@kvmkit:[^\n]*# "


class SocketConsole:
    def __init__(self, path: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.buf = b""
        self._cursor = 0
        self._seq = 0
        self._cond = threading.Condition()
        self._closed = False
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            with self._cond:
                if not data:
                    self._closed = True
                    self._cond.notify_all()
                    return
                self.buf += data
                self._cond.notify_all()

    def expect(self, pattern: bytes, timeout: float = 120.0) -> re.Match:
        rx = re.compile(pattern, re.S)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                m = rx.search(self.buf, self._cursor)
                if m:
                    self._cursor = m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    raise AssertionError(f"{pattern!r} not seen; last output: {self.buf[-1500:]!r}")
                self._cond.wait(min(left, 0.5))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def shell(self, command: str, timeout: float = 120.0) -> tuple[int, str]:
        """Run ``command`` at the prompt; (exit status, output).  The markers
        are typed split ("__k""1s") so their echo never matches."""
        self._seq += 1
        n = self._seq
        self.send(f'echo "__k""{n}s"; {command}; echo "__k""{n}e" $?\n'.encode())
        m = self.expect(rb"__k%ds\r?\n(.*?)__k%de (\d+)\r?\n" % (n, n), timeout)
        return int(m.group(2)), m.group(1).decode("utf-8", "replace").replace("\r\n", "\n")

    def close(self) -> None:
        self.sock.close()
