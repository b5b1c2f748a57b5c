"""Helpers shared by the manager tests."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"


def tiny_xml(name: str, kernel: Path, *, uuid: str | None = None, disks: tuple[str, ...] = (),
             extra_devices: str = "", memory_mib: int = 64) -> str:
    """A domain running one of tests/guests (idle halts forever, echo echoes COM1)."""
    disk_xml = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='{'qcow2' if d.endswith('.qcow2') else 'raw'}'/>"
        f"<source file='{d}'/><target dev='vd{chr(97 + i)}' bus='virtio'/></disk>" for i, d in enumerate(disks))
    return (f"<domain type='kvm'><name>{name}</name>" + (f"<uuid>{uuid}</uuid>" if uuid else "") +
            f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64'>hvm</type><kernel>{kernel}</kernel></os>"
            f"<devices>{disk_xml}<serial type='pty'/><console type='pty'/>{extra_devices}</devices></domain>")


class PtyConsole:
    """``kvmkit virsh console NAME`` on a pseudo-terminal, as a user's
    terminal runs it: what it prints is collected, keys are typed into it."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        import os
        import pty
        import subprocess
        import threading
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True)
        os.close(slave)
        self.buf = b""
        self._cursor = 0
        self._lock = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        import os
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                data = b""
            with self._lock:
                if not data:
                    self._lock.notify_all()
                    return
                self.buf += data
                self._lock.notify_all()

    def expect(self, pattern: bytes, timeout: float) -> "re.Match[bytes]":

        import time
        rx = re.compile(pattern, re.S)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                m = rx.search(self.buf, self._cursor)
                if m:
                    self._cursor = m.end()
                    return m
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"{pattern!r} not seen; last output: {self.buf[-1500:]!r}")
                self._lock.wait(min(left, 0.5))

    def send(self, data: bytes) -> None:
        import os
        os.write(self.master, data)

    _seq = 0

    def shell(self, command: str, timeout: float = 300.0) -> tuple[int, str]:
        """Run ``command`` at the guest's shell prompt; (status, output)."""
        PtyConsole._seq += 1
        n = PtyConsole._seq
        self.send(f'echo "__k""{n}s"; {command}; echo "__k""{n}e" $?\n'.encode())
        m = self.expect(rb"__k%ds\r?\n(.*?)__k%de (\d+)\r?\n" % (n, n), timeout)
        return int(m.group(2)), m.group(1).decode("utf-8", "replace").replace("\r\n", "\n")

    def detach(self, timeout: float = 30.0) -> int:
        """Ctrl-] as virsh knows it; the console command's exit status."""
        self.send(b"\x1d")
        status = self.proc.wait(timeout)
        self._reader.join(5)
        import os
        os.close(self.master)
        return status
