"""A jailed VMM's taps and saved states: the supervisor opens each tap in
the host's network namespace and joins it to its bridge (the jail has
neither), QMP saves land in a ``--jail-bind`` directory, and a jailed
restore of a snapshot with a NIC gets the snapshot's tap by name from the
supervisor, on its bridge again.  Real taps and a real bridge, in a
network namespace this test makes."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time

import pytest

from .helpers import ROOT, qmp

pytestmark = pytest.mark.kvm
KVMKIT = [sys.executable, "-m", "kvmkit.cli.main"]
COUNTER_AT = 0x5000


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


@pytest.fixture
def netns():
    ns = f"kvjn{os.getpid()}-{os.urandom(2).hex()}"
    sh("ip", "netns", "add", ns)
    br = f"kvjb{os.getpid()}"[:15]
    sh("ip", "-n", ns, "link", "add", br, "type", "bridge")
    sh("ip", "-n", ns, "link", "set", br, "up")
    yield ns, br
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _start(ns: str, *args: str, qmp_path: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "KVMKIT_ISOLATION"}
    env["PYTHONPATH"] = str(ROOT)
    p = subprocess.Popen(["ip", "netns", "exec", ns, *KVMKIT, "run", "--isolation", "on", "--serial", "null",
                          "--qmp", f"unix:{qmp_path},server,wait=off", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            qmp(qmp_path, "query-status")
            return p
        except Exception:
            assert p.poll() is None, p.stderr.read()
            assert time.monotonic() < deadline, "QMP never answered"
            time.sleep(0.1)


def _master(ns: str, tap: str) -> str | None:
    info = json.loads(sh("ip", "-n", ns, "-j", "link", "show", tap))[0]
    return info.get("master")


def _count(state: str) -> int:
    with open(os.path.join(state, "memory"), "rb") as f:
        f.seek(COUNTER_AT)
        return struct.unpack("<Q", f.read(8))[0]


def _save(qmp_path: str, path: str) -> None:
    os.mkdir(path)
    st = os.stat(os.path.dirname(path))
    os.chown(path, st.st_uid, st.st_gid)                 # the bound directory is the VM user's while it runs
    qmp(qmp_path, "kvmkit-snapshot-save", {"path": path})


def _end(p: subprocess.Popen, qmp_path: str) -> None:
    try:
        qmp(qmp_path, "quit")
    except Exception:
        pass
    _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err


def test_jailed_tap_on_a_bridge_saved_and_restored_jailed(netns, tiny_guest, tmp_path):
    ns, br = netns
    tap = f"kvjt{os.getpid()}"[:15]
    saves = tmp_path / "saves"
    saves.mkdir()
    q1, q2 = str(tmp_path / "q1.sock"), str(tmp_path / "q2.sock")
    p = _start(ns, "--kernel", str(tiny_guest("counter")), "-m", "64M", "--net",
               f"tap={tap},bridge={br},mac=52:54:00:12:34:56", "--jail-bind", str(saves), qmp_path=q1)
    try:
        assert _master(ns, tap) == br                   # joined by the supervisor, outside the jail
        time.sleep(0.3)
        qmp(q1, "stop")
        _save(q1, str(saves / "snap"))                  # the jailed VMM writes through its bind
    finally:
        _end(p, q1)
    assert os.stat(saves).st_uid == 0                    # handed back after the run
    first = _count(str(saves / "snap"))
    assert first > 0
    r = subprocess.run(["ip", "-n", ns, "link", "show", tap], capture_output=True)
    assert r.returncode != 0                             # the tap went with its VMM

    p = _start(ns, "--restore", str(saves / "snap"), "--jail-bind", str(saves), qmp_path=q2)
    try:
        assert _master(ns, tap) == br                   # the snapshot's tap, by name, on its bridge again
        assert qmp(q2, "query-status")["status"] == "running"
        time.sleep(0.5)
        qmp(q2, "stop")
        _save(q2, str(saves / "later"))
    finally:
        _end(p, q2)
    assert _count(str(saves / "later")) > first          # it went on counting from where it was
