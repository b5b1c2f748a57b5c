"""Where a migration stream goes and comes from, named as QEMU names it:
``file:PATH``, ``exec:CMD`` (a shell command: the source writes to its
stdin, the destination reads its stdout), ``unix:PATH`` and
``tcp:HOST:PORT`` (the destination listens, the source connects).

Socket transports have a return path: after the destination has applied
the whole stream it answers ``OK`` (or ``ERR reason``), so the source only
counts a migration complete -- and stops for good -- once the destination
really runs; a destination that dies or refuses leaves the source running.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from dataclasses import dataclass
from typing import BinaryIO

from kvmkit.errors import ConfigError

SCHEMES = ("file", "exec", "unix", "tcp", "fd")    # fd:N: --incoming only, a stream handed over (QEMU's too)


@dataclass(frozen=True)
class Uri:
    scheme: str
    target: str                # PATH, CMD, or HOST:PORT
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        return f"{self.scheme}:{self.target}"


def parse_uri(text: str) -> Uri:
    """``file:PATH|exec:CMD|unix:PATH|tcp:HOST:PORT``; ConfigError naming the problem."""
    scheme, sep, target = text.partition(":")
    if not sep or scheme not in SCHEMES:
        raise ConfigError(f"migration URI {text!r}: expected file:PATH, exec:CMD, unix:PATH or tcp:HOST:PORT")
    if not target:
        raise ConfigError(f"migration URI {text!r}: nothing after '{scheme}:'")
    if scheme == "fd" and not target.isdigit():
        raise ConfigError(f"migration URI {text!r}: expected fd:N, an open descriptor")
    if scheme != "tcp":
        return Uri(scheme, target)
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"migration URI {text!r}: expected tcp:HOST:PORT")
    return Uri(scheme, target, host or "0", int(port))


def _tcp_family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class Outgoing:
    """The source's end: ``write`` bytes, then ``finish`` (flush, wait for
    the destination's answer where there is a return path)."""

    def __init__(self, uri: Uri, connect_timeout: float = 10.0) -> None:
        self.uri = uri
        self._sock: socket.socket | None = None
        self._file: BinaryIO | None = None
        self._proc: subprocess.Popen | None = None
        self.finished = False
        if uri.scheme == "fd":
            raise ConfigError(f"migration URI {uri}: fd: is only for --incoming")
        try:
            if uri.scheme == "file":
                self._file = open(uri.target, "wb")
            elif uri.scheme == "exec":
                self._proc = subprocess.Popen(["/bin/sh", "-c", uri.target], stdin=subprocess.PIPE,
                                              stdout=subprocess.DEVNULL)
                self._file = self._proc.stdin
            elif uri.scheme == "unix":
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.settimeout(connect_timeout)
                self._sock.connect(uri.target)
            else:
                host = "127.0.0.1" if uri.host in ("0", "") else uri.host
                self._sock = socket.create_connection((host, uri.port), timeout=connect_timeout)
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            self.abort()
            raise ConfigError(f"{uri}: {exc.strerror or exc}") from None
        if self._sock is not None:
            self._sock.settimeout(None)

    def write(self, data: bytes | memoryview) -> None:
        sock, f = self._sock, self._file
        if sock is not None:
            sock.sendall(data)
        elif f is not None:
            f.write(data)
        else:
            raise ConnectionAbortedError("the migration was stopped")

    def _line(self, timeout: float) -> str:
        self._sock.settimeout(timeout)
        line = b""
        try:
            while not line.endswith(b"\n"):
                chunk = self._sock.recv(1)
                if not chunk:
                    break
                line += chunk
        except socket.timeout:
            raise ConfigError(f"{self.uri}: the destination did not answer in {timeout:g} s") from None
        finally:
            if self._sock is not None:
                self._sock.settimeout(None)
        return line.decode(errors="replace").strip()

    def refusal(self) -> str | None:
        """After a failed send: the reason the destination gave, if it sent one."""
        sock = self._sock
        if sock is None:
            return None
        try:
            sock.settimeout(0.5)
            data = b""
            while len(data) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("ERR "):
                return line[4:]
        return None

    def wait_ready(self, timeout: float = 60.0) -> None:
        """After a SYNC, before the source stops: wait until the destination
        has built its machine and applied everything sent so far (it says
        ``READY``), so neither is part of the downtime."""
        if self._sock is None:
            return
        text = self._line(timeout)
        if text != "READY":
            raise ConfigError(f"the destination refused the stream: {_refusal(text)}")

    def finish(self, timeout: float = 30.0) -> None:
        """Everything is written: make it durable (file), or wait for the
        destination to say it runs (sockets); raise OSError/ConfigError if not."""
        if self._file is not None:
            self._file.flush()
            if self.uri.scheme == "file":
                os.fsync(self._file.fileno())
            self._file.close()
            self._file = None
        if self._proc is not None:
            rc = self._proc.wait(timeout)
            if rc != 0:
                raise ConfigError(f"{self.uri}: the command exited with status {rc}")
        if self._sock is not None:
            self._sock.shutdown(socket.SHUT_WR)
            text = self._line(timeout)
            if text != "OK":
                raise ConfigError(f"the destination refused the stream: {_refusal(text)}")
        self.finished = True

    def abort(self) -> None:
        """Stop now (cancel, fault): unblocks a writer stuck in send.  Safe to
        call from two threads at once (a cancel racing the job's own cleanup)."""
        sock, self._sock = self._sock, None
        f, self._file = self._file, None
        proc, self._proc = self._proc, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if f is not None:
            try:
                f.close()
            except (OSError, ValueError):
                pass
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if self.uri.scheme == "file" and not self.finished:
            try:
                os.unlink(self.uri.target)       # no half-written stream left for a restore to trip on
            except OSError:
                pass


def _refusal(text: str) -> str:
    return text[4:] if text.startswith("ERR ") else "it closed the connection without starting"


class Incoming:
    """The destination's end: ``open()`` binds (sockets), ``accept()``
    waits for the source and returns a readable file; ``answer`` replies."""

    def __init__(self, uri: Uri) -> None:
        self.uri = uri
        self._listener: socket.socket | None = None
        self._conn: socket.socket | None = None
        self._proc: subprocess.Popen | None = None
        self._file: BinaryIO | None = None
        self._bound: str | None = None
        try:
            if uri.scheme == "unix":
                if os.path.exists(uri.target):
                    os.unlink(uri.target)
                self._bound = uri.target
                self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                tmp = f"{uri.target}.{os.getpid()}.tmp"
                self._listener.bind(tmp)
                self._listener.listen(1)
                os.rename(tmp, uri.target)        # the path appears only once it accepts
            elif uri.scheme == "tcp":
                host = "0.0.0.0" if uri.host in ("0", "") else uri.host
                self._listener = socket.socket(_tcp_family(host), socket.SOCK_STREAM)
                self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self._listener.bind((host, uri.port))
                self._listener.listen(1)
            elif uri.scheme == "file":
                self._file = open(uri.target, "rb")
            elif uri.scheme == "fd":              # a jail's supervisor accepted (or opened) it
                fd = int(uri.target)
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    self._conn = socket.socket(fileno=fd)
                else:
                    self._file = os.fdopen(fd, "rb")
        except OSError as exc:
            self.close()
            raise ConfigError(f"--incoming {uri}: {exc.strerror or exc}") from None

    @property
    def port(self) -> int:
        """The bound TCP port (useful with tcp:HOST:0)."""
        if self.uri.scheme != "tcp" or self._listener is None:
            return 0
        return self._listener.getsockname()[1]

    def accept(self) -> BinaryIO:
        if self._listener is not None:
            self._conn, _ = self._listener.accept()
            self._listener.close()
            self._listener = None
            self._file = self._conn.makefile("rb", buffering=1 << 20)
        elif self._conn is not None:
            self._file = self._conn.makefile("rb", buffering=1 << 20)
        elif self.uri.scheme == "exec":
            self._proc = subprocess.Popen(["/bin/sh", "-c", self.uri.target], stdout=subprocess.PIPE)
            self._file = self._proc.stdout
        return self._file

    def ready(self) -> None:
        """All before the source's SYNC is applied: it may stop the guest now."""
        if self._conn is not None:
            try:
                self._conn.sendall(b"READY\n")
            except OSError:
                pass

    def answer(self, ok: bool, why: str = "") -> None:
        if self._conn is None:
            return
        try:
            self._conn.sendall(b"OK\n" if ok else f"ERR {why}\n".encode())
        except OSError:
            pass

    def close(self) -> None:
        for f in (self._file,):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        for s in (self._conn, self._listener):
            if s is not None:
                s.close()
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
        if self._bound is not None:
            try:
                os.unlink(self._bound)
            except OSError:
                pass
            self._bound = None
        self._file = self._conn = self._listener = self._proc = None
