"""``kvmkit snapshot create --diff-from`` and ``kvmkit snapshot merge`` as a
user runs them, on a memwriter guest behind a real QMP socket."""

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


def test_diff_create_info_merge_restore(tiny_guest, machine, tmp_path):
    m = machine(tiny_guest("memwriter"))
    sock = tmp_path / "vm.qmp"
    base, diff = tmp_path / "base", tmp_path / "diff"
    with QmpServer(m, f"unix:{sock}"):
        assert kvmkit("snapshot", "create", "--qmp", str(sock), str(base)).returncode == 0
        bad = kvmkit("snapshot", "create", "--qmp", str(sock), "--diff-from", str(tmp_path), str(diff))
        assert bad.returncode == 1 and "not a snapshot directory" in bad.stderr and "Traceback" not in bad.stderr
        r = kvmkit("snapshot", "create", "--qmp", str(sock), "--diff-from", str(base), str(diff))
        assert r.returncode == 0, r.stderr
        assert "dirtied since the base" in r.stdout
    info = json.loads(kvmkit("snapshot", "info", "--json", str(diff)).stdout)
    assert info["diff-from"] == str(base) and 1024 <= info["diff-pages"] < 2048
    assert info["memory-file-allocated"] < 8 << 20
    r = kvmkit("snapshot", "merge", str(diff))
    assert r.returncode == 0 and "merged" in r.stdout and not diff.exists()
    r = kvmkit("snapshot", "merge", str(base))
    assert r.returncode == 1 and "not a diff" in r.stderr and "Traceback" not in r.stderr
