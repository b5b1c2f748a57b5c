"""Fixtures for the manager: a Host on a fresh state directory (under
pytest's tmp_path, deliberately longer than a unix socket path may be),
domain XML for the tiny guests, and ``virsh`` run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import REPO


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "a-state-directory-whose-path-is-long-enough-to-overflow-sun-path" / "kvmkit"


@pytest.fixture
def host(state_dir: Path):
    """A Host; every VMM still running at the end is destroyed."""
    from kvmkit.manager import Host
    h = Host(state_dir)
    yield h
    stop_all(h)


def stop_all(h) -> None:
    import signal
    for info in h.domains(inactive=False):
        try:
            h.destroy(info.name)
        except Exception:
            if info.pid:
                try:
                    os.kill(info.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture
def idle(tiny_guest) -> Path:
    """A tiny guest that keeps running halted (no host CPU used): 20 of them fit on 2 cores."""
    return tiny_guest("idle")


@pytest.fixture
def virsh(state_dir: Path, host):
    """``virsh("list", "--all")`` → CompletedProcess of ``kvmkit virsh -c STATE ...``."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def run(*args: str, input: str | None = None, env_extra: dict | None = None, check: bool = False):
        res = subprocess.run([sys.executable, "-m", "kvmkit.cli.main", "virsh", "-c", str(state_dir), *args],
                             capture_output=True, text=True, input=input, env={**env, **(env_extra or {})},
                             timeout=300)
        if check:
            assert res.returncode == 0, (args, res.stdout, res.stderr)
        return res
    return run
