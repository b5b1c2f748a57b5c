"""``kvmkit snapshot create/info`` and ``kvmkit run --restore`` as a user
runs them: a real QMP socket on a tiny guest, real subprocesses."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from kvmkit.monitor.server import QmpServer

pytestmark = pytest.mark.kvm


def kvmkit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmkit.cli.main", *args], capture_output=True,
                          text=True, timeout=timeout)


def test_create_through_qmp_then_info_then_restore(tiny_guest, machine, tmp_path):
    m = machine(tiny_guest("hello"), cmdline="7", start_paused=True)
    sock = tmp_path / "vm.qmp"
    with QmpServer(m, f"unix:{sock}"):
        r = kvmkit("snapshot", "create", "--qmp", str(sock), str(tmp_path / "snap"))
    assert r.returncode == 0, r.stderr
    assert "64 MiB of guest RAM" in r.stdout
    info = kvmkit("snapshot", "info", "--json", str(tmp_path / "snap"))
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["memory"] == 64 << 20
    # the paused-at-start guest runs from the snapshot and exits with its status
    run = kvmkit("run", "--restore", str(tmp_path / "snap"), "--serial", "null")
    assert run.returncode == (7 << 1) | 1, run.stderr


@pytest.mark.parametrize("argv, message", [
    (["run", "--restore", "/nonexistent/snap"], "no such directory"),
    (["run", "--restore", "/tmp,bogus=1"], "unknown option"),
    (["run", "--restore", "/tmp", "--kernel", "/bin/true"], "--kernel cannot be given"),
    (["run", "--restore", "/tmp"], "no vmstate"),
    (["snapshot", "info", "/nonexistent/snap"], "no such directory"),
    (["snapshot", "create", "--qmp", "/nonexistent.sock", "/tmp/x"], ""),
])
def test_bad_input_is_one_line_and_status_1(argv, message):
    r = kvmkit(*argv)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and message in r.stderr, r.stderr
