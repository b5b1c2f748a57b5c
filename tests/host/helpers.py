"""A real ``kvmkit run`` VMM in a child process, steered with QEMU's own
QMP client (qemu.qmp): what a user or a manager sees of one VM."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qemu.qmp import QMPClient

ROOT = Path(__file__).resolve().parents[2]


def qmp(path: str, command: str, arguments: dict | None = None):
    async def go():
        c = QMPClient("kvmkit-test")
        await asyncio.wait_for(c.connect(path), 10)
        try:
            return await asyncio.wait_for(c.execute(command, arguments), 10)
        finally:
            await c.disconnect()
    return asyncio.run(go())


class Vmm:
    """``kvmkit run --kernel GUEST ...`` with a QMP socket; use as a context manager."""

    def __init__(self, kernel: Path, *args: str, memory: str = "64M", cpus: int = 1) -> None:
        self.dir = tempfile.mkdtemp(prefix=f"kvmkit-res-{os.getpid()}-")
        self.qmp_path = os.path.join(self.dir, "qmp.sock")
        self.argv = [sys.executable, "-m", "kvmkit.cli.main", "run", "--kernel", str(kernel), "-m", memory,
                     "--cpus", str(cpus), "--serial", "null", "--qmp", f"unix:{self.qmp_path},server,wait=off",
                     *args]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(self.argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 30) -> "Vmm":
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.qmp_path):
            if self.proc.poll() is not None:
                raise AssertionError(f"the VMM exited {self.proc.returncode}: {self.proc.stderr.read()}")
            assert time.monotonic() < deadline, "the VMM's QMP socket never appeared"
            time.sleep(0.05)
        return self

    def vcpu_tids(self, timeout: float = 20) -> list[int]:
        """From QMP query-cpus-fast, once the vCPU threads exist."""
        from qemu.qmp import ConnectError
        deadline = time.monotonic() + timeout
        while True:
            try:
                cpus = qmp(self.qmp_path, "query-cpus-fast")
            except ConnectError:          # the socket exists a moment before it listens
                assert time.monotonic() < deadline, "the VMM's QMP socket never answered"
                time.sleep(0.05)
                continue
            tids = [c["thread-id"] for c in cpus]
            if all(t != self.pid and os.path.exists(f"/proc/{self.pid}/task/{t}") for t in tids):
                return tids
            assert time.monotonic() < deadline, f"vCPU threads never appeared: {cpus}"
            time.sleep(0.05)

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        for f in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, f))
        os.rmdir(self.dir)
        return self.proc.returncode, err

    def __enter__(self) -> "Vmm":
        return self.wait_ready()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_vmm(kernel: Path, *args: str, timeout: float = 30, **kw) -> subprocess.CompletedProcess:
    """A VMM that is expected to end by itself (or fail at start)."""
    v = Vmm(kernel, *args, **kw)
    try:
        out, err = v.proc.communicate(timeout=timeout)
    finally:
        if v.proc.poll() is None:
            v.proc.kill()
            v.proc.communicate()
        for f in os.listdir(v.dir):
            os.unlink(os.path.join(v.dir, f))
        os.rmdir(v.dir)
    return subprocess.CompletedProcess(v.argv, v.proc.returncode, out, err)


def kvmkit_cgroups(pid: int | None = None) -> list[Path]:
    """Every kvmkit cgroup directory on the host (of VMM ``pid`` only, if given)."""
    from kvmkit.host.cgroups import PREFIX, discover
    out = []
    for h in discover().hierarchies:
        try:
            for p in h.base.iterdir():
                if p.name.startswith(f"{PREFIX}{pid}-" if pid else PREFIX):
                    out.append(p)
        except OSError:
            pass
    return out
