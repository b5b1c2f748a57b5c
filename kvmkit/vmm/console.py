"""The serial console's host side: where guest output goes, where input
comes from, and the ``expect``/``send`` API scripts and tests use.

Every byte the guest prints is kept (up to a cap) so ``expect`` can search it;
it is also copied to the chosen destination: the terminal (raw mode, Ctrl-a x
to quit, as in QEMU), a file, or clients of a listening unix socket.
"""

from __future__ import annotations

import os
import re
import select
import socket
import sys
import termios
import threading
import time
import tty
from typing import Callable

from kvmkit.errors import ConfigError, KvmkitError
from kvmkit.vmm.config import SerialSpec

ESCAPE = 0x01  # Ctrl-a
MAX_KEPT = 64 << 20
ESCAPE_HELP = (b"\r\nC-a h    print this help\r\nC-a x    exit kvmkit\r\n"
               b"C-a C-a  send C-a\r\n")


class ConsoleTimeout(KvmkitError, TimeoutError):
    pass


class Console:
    def __init__(self, spec: SerialSpec, on_quit: Callable[[], None] | None = None) -> None:
        self.spec = spec
        self.on_quit = on_quit or (lambda: None)
        self._buf = bytearray()
        self._dropped = 0
        self._cond = threading.Condition()
        self._cursor = 0
        self._input: Callable[[bytes], None] | None = None
        self._closed = False
        self._file = None
        self._listener: socket.socket | None = None
        self._clients: list[socket.socket] = []
        self._saved_tty = None
        self._wake_r, self._wake_w = os.pipe()
        self._threads: list[threading.Thread] = []
        self._escape = False
        self._open()

    # --- setup -----------------------------------------------------------
    def _open(self) -> None:
        kind = self.spec.kind
        if kind == "file":
            try:
                self._file = open(self.spec.path, "ab", buffering=0)
            except OSError as e:
                raise ConfigError(f"serial file {self.spec.path}: {e.strerror}") from None
        elif kind == "unix":
            try:
                if os.path.exists(self.spec.path):
                    os.unlink(self.spec.path)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.bind(self.spec.path)
                s.listen(4)
            except OSError as e:
                raise ConfigError(f"serial socket {self.spec.path}: {e.strerror}") from None
            self._listener = s
            self._spawn(self._socket_loop, "console-socket")
        elif kind == "stdio":
            if sys.stdin.isatty():
                fd = sys.stdin.fileno()
                self._saved_tty = termios.tcgetattr(fd)
                tty.setraw(fd)
            self._spawn(self._stdin_loop, "console-stdin")

    def _spawn(self, fn, name: str) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def attach_input(self, sink: Callable[[bytes], None]) -> None:
        """Where host input goes (the UART's receive)."""
        self._input = sink

    # --- guest output ----------------------------------------------------
    def write(self, data: bytes) -> None:
        with self._cond:
            self._buf += data
            if len(self._buf) > MAX_KEPT:
                cut = len(self._buf) - MAX_KEPT // 2
                del self._buf[:cut]
                self._dropped += cut
            self._cond.notify_all()
        kind = self.spec.kind
        try:
            if kind == "stdio":
                os.write(sys.stdout.fileno(), data)
            elif kind == "file":
                self._file.write(data)
            elif kind == "unix":
                for c in list(self._clients):
                    try:
                        c.sendall(data)
                    except OSError:
                        self._clients.remove(c)
        except OSError:
            pass  # a closed terminal must not stop the guest

    # --- API -------------------------------------------------------------
    @property
    def output(self) -> bytes:
        with self._cond:
            return bytes(self._buf)

    @property
    def text(self) -> str:
        return self.output.decode("utf-8", "replace")

    def send(self, data: bytes | str) -> None:
        """Type ``data`` into the guest's console."""
        if isinstance(data, str):
            data = data.encode()
        if self._input:
            self._input(data)

    def expect(self, pattern: str | bytes | re.Pattern, timeout: float = 60.0,
               alive: Callable[[], bool] | None = None) -> re.Match:
        """Wait until output after the last match contains ``pattern`` (a
        regex); return the match and move the cursor past it."""
        if isinstance(pattern, str):
            pattern = pattern.encode()
        rx = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                start = max(self._cursor - self._dropped, 0)
                m = rx.search(self._buf, start)
                if m:
                    self._cursor = m.end() + self._dropped
                    return m
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = bytes(self._buf[-400:]).decode("utf-8", "replace")
                    raise ConsoleTimeout(f"console: {rx.pattern!r} not seen within {timeout:g}s; "
                                         f"last output:\n{tail}")
                if alive is not None and not alive():
                    tail = bytes(self._buf[-400:]).decode("utf-8", "replace")
                    raise ConsoleTimeout(f"console: VM stopped before {rx.pattern!r} was seen; "
                                         f"last output:\n{tail}")
                self._cond.wait(min(left, 0.5))

    # --- input threads ---------------------------------------------------
    def _stdin_loop(self) -> None:
        fd = sys.stdin.fileno()
        interactive = self._saved_tty is not None
        while not self._closed:
            r, _, _ = select.select([fd, self._wake_r], [], [])
            if self._wake_r in r:
                return
            try:
                data = os.read(fd, 1024)
            except OSError:
                return
            if not data:
                return
            if interactive:
                data = self._filter_escape(data)
            if data:
                self.send(data)

    def _filter_escape(self, data: bytes) -> bytes:
        out = bytearray()
        for b in data:
            if self._escape:
                self._escape = False
                if b in (ord("x"), ord("X")):
                    self.on_quit()
                    return bytes(out)
                if b in (ord("h"), ord("H"), ord("?")):
                    os.write(sys.stdout.fileno(), ESCAPE_HELP)
                elif b == ESCAPE:
                    out.append(ESCAPE)
                continue
            if b == ESCAPE:
                self._escape = True
            else:
                out.append(b)
        return bytes(out)

    def _socket_loop(self) -> None:
        while not self._closed:
            socks = [self._listener, self._wake_r, *self._clients]
            r, _, _ = select.select(socks, [], [])
            if self._wake_r in r:
                return
            for s in r:
                if s is self._listener:
                    c, _ = self._listener.accept()
                    self._clients.append(c)
                    continue
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    self._clients.remove(s)
                    s.close()
                else:
                    self.send(data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        os.write(self._wake_w, b"x")
        if self._saved_tty is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None
        for c in self._clients:
            c.close()
        if self._listener:
            self._listener.close()
            try:
                os.unlink(self.spec.path)
            except OSError:
                pass
        if self._file:
            self._file.close()
        with self._cond:
            self._cond.notify_all()
