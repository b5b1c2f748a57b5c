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
HOLD_WINDOW = 4096      # how far back from the end hold_input_at's pattern is looked for
REPLAY = 1 << 20        # what a unix-socket console's first client gets of earlier output
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
        self._backlog: dict[socket.socket, bytearray] = {}   # output a slow client has yet to take
        self._saved_tty = None
        self._wake_r, self._wake_w = os.pipe()
        self._poke_r, self._poke_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._threads: list[threading.Thread] = []
        self._escape = False
        self._replayed = False
        self._pending_input = bytearray()
        self._held = False      # input kept here for a moment (the start cache saving at the prompt)
        self._hold_at: re.Pattern | None = None    # output that starts holding input (hold_input_at)
        self._deliver = threading.Lock()   # one delivery at a time, in order (never under _cond: the
                                           # UART's receive takes its own lock, which a vCPU holds to write)
        self.typed = 0          # bytes of host input delivered so far (the start cache saves only when none is)
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
            # Bound under a temporary name and renamed into place once it
            # listens: a client that sees the path can always connect.
            tmp = f"{self.spec.path}.{os.getpid()}.tmp"
            try:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.bind(tmp)
                s.listen(4)
                os.rename(tmp, self.spec.path)
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
        """Where host input goes (the UART's receive).  Input that arrived
        before (a socket client can connect while the VM is still being
        built) is delivered now, in order."""
        with self._deliver:
            with self._cond:
                self._input = sink
                pending = self._take_pending()
            if pending:
                sink(pending)

    def hold_input_at(self, pattern: re.Pattern | None) -> None:
        r"""From the moment the guest's output ends with ``pattern`` (a regex
        ending in ``\Z``), keep host input here, in order, instead of typing
        it in, until :meth:`release_input`.  The start cache holds it while
        it checks the prompt is quiet and saves: a user (or a terminal
        answering the shell's cursor query) who types the moment the prompt
        shows neither stops the save nor gets a keystroke saved into it.
        Triggered by the output itself, so no input can slip in between."""
        with self._cond:
            self._hold_at = pattern
            if pattern is not None and pattern.search(self._buf, max(0, len(self._buf) - HOLD_WINDOW)):
                self._held = True

    @property
    def input_held(self) -> bool:
        return self._held

    def release_input(self) -> None:
        """Type in what was held, and from now on what comes."""
        with self._deliver:
            with self._cond:
                self._held = False
                sink = self._input
                pending = self._take_pending() if sink is not None else b""
            if pending:
                sink(pending)

    def _take_pending(self) -> bytes:
        """The queued input, counted as delivered (caller holds _cond and delivers it)."""
        pending, self._pending_input = bytes(self._pending_input), bytearray()
        self.typed += len(pending)
        return pending

    # --- guest output ----------------------------------------------------
    def write(self, data: bytes) -> None:
        with self._cond:
            self._buf += data
            if self._hold_at is not None and self._hold_at.search(self._buf, max(0, len(self._buf) - HOLD_WINDOW)):
                self._held = True
            if len(self._buf) > MAX_KEPT:
                cut = len(self._buf) - MAX_KEPT // 2
                del self._buf[:cut]
                self._dropped += cut
            self._cond.notify_all()
            if self.spec.kind == "unix":
                # Under the lock, so a client accepted meanwhile gets each
                # byte once (replay or live); never blocking, so a client
                # that stops reading loses output instead of stalling the guest.
                for c in list(self._clients):
                    self._send_to(c, data)
                return
        try:
            if self.spec.kind == "stdio":
                os.write(sys.stdout.fileno(), data)
            elif self.spec.kind == "file":
                self._file.write(data)
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
        with self._deliver:
            with self._cond:
                if self._input is None or self._held:
                    self._pending_input += data
                    return
                sink = self._input
                self.typed += len(data)
            sink(data)

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

    def shell(self, command: str, timeout: float = 120.0, alive: Callable[[], bool] | None = None
              ) -> tuple[int, str]:
        """Run ``command`` at a POSIX shell prompt on this console and return
        ``(exit status, output)``.

        The command is typed between two echoed markers, each written so that
        its echo as typed ("__kvmkit""_7s") differs from what the shell
        prints (__kvmkit_7s): the line editor's echo, however it wraps the
        line, cannot be mistaken for output.
        """
        self._shell_seq = getattr(self, "_shell_seq", 0) + 1
        n = self._shell_seq
        command = command.strip()
        sep = " " if command.endswith("&") and not command.endswith("&&") else "; "   # `cmd &;` is a syntax error
        self.send(f'echo "__kvmkit""_{n}s"; {command}{sep}echo "__kvmkit""_{n}e" $?\n')
        rx = re.compile(rb"__kvmkit_%ds\r?\n(.*?)__kvmkit_%de (\d+)\r?\n" % (n, n), re.S)
        m = self.expect(rx, timeout, alive)
        return int(m.group(2)), m.group(1).decode("utf-8", "replace").replace("\r\n", "\n")

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
            with self._cond:
                socks = [self._listener, self._wake_r, self._poke_r, *self._clients]
                behind = [c for c in self._clients if self._backlog.get(c)]
            r, w, _ = select.select(socks, behind, [])
            if self._wake_r in r:
                return
            if self._poke_r in r:
                os.read(self._poke_r, 4096)
                r.remove(self._poke_r)
            with self._cond:
                for c in w:
                    if c in self._clients:
                        self._send_to(c, b"")
            w_ready = set(w) - set(r)
            for s in r:
                if s is self._listener:
                    c, _ = self._listener.accept()
                    with self._cond:
                        # The first client also gets what the guest printed
                        # before anyone was connected (up to REPLAY bytes):
                        # nothing is lost between start-up and connect.
                        c.setblocking(False)
                        self._clients.append(c)
                        self._backlog[c] = bytearray()
                        if not self._replayed:
                            self._replayed = True
                            self._send_to(c, bytes(self._buf[-REPLAY:]))
                    continue
                if s in w_ready:
                    continue
                try:
                    data = s.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    with self._cond:
                        self._drop(s)
                    s.close()
                else:
                    self.send(data)

    def _send_to(self, c: socket.socket, data: bytes) -> None:
        """Send what the client's socket takes now; keep the rest (at most
        REPLAY bytes, the oldest dropped) for when it can take more.  Called
        with the lock held."""
        backlog = self._backlog.setdefault(c, bytearray())
        was_behind = bool(backlog)
        backlog += data
        if len(backlog) > REPLAY:
            del backlog[:len(backlog) - REPLAY]
        try:
            while backlog:
                n = c.send(backlog)
                del backlog[:n]
        except BlockingIOError:
            if not was_behind:
                os.write(self._poke_w, b"w")         # the loop now waits for writability too
        except OSError:
            self._drop(c)

    def _drop(self, c: socket.socket) -> None:
        if c in self._clients:
            self._clients.remove(c)
        self._backlog.pop(c, None)

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
