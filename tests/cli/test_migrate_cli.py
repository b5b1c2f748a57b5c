"""Live migration between two real ``kvmkit run`` processes, steered by
QEMU's own client library (qemu.qmp) and by ``kvmkit migrate``: the
memwriter guest keeps its generation counter (R8) going up across the move
and its in-guest checksums keep passing on the destination; a destination
killed mid-stream leaves the source running; bad input is one line."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from qemu.qmp import QMPClient

pytestmark = pytest.mark.kvm
KVMKIT = [sys.executable, "-m", "kvmkit.cli.main"]


def kvmkit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*KVMKIT, *args], capture_output=True, text=True, timeout=timeout)


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([*KVMKIT, "run", "--serial", "null", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def connect(name: str, path: Path) -> QMPClient:
    """The socket file appears at bind(), a moment before listen()."""
    for _ in range(100):
        qmp = QMPClient(name)
        try:
            await qmp.connect(str(path))
            return qmp
        except Exception:  # noqa: BLE001 - qemu.qmp wraps ECONNREFUSED
            await asyncio.sleep(0.05)
    raise AssertionError(f"no QMP server on {path}")


async def r8(qmp: QMPClient) -> int:
    out = await qmp.execute("human-monitor-command", {"command-line": "info registers"})
    return int(re.search(r"R8 =([0-9a-f]{16})", out).group(1), 16)


async def event(qmp: QMPClient, name: str, status: str, timeout: float = 60) -> dict:
    async def find():
        async for ev in qmp.events:
            if ev["event"] == name and ev.get("data", {}).get("status") == status:
                return dict(ev)
    return await asyncio.wait_for(find(), timeout)


@pytest.fixture
def procs():
    made: list[subprocess.Popen] = []
    yield made
    for p in made:
        if p.poll() is None:
            p.kill()
        p.wait(10)


@pytest.mark.parametrize("scheme, isolation", [("tcp", "off"), ("tcp", "on"), ("unix", "on")])
def test_two_processes_with_qemu_qmp(tiny_guest, tmp_path, procs, scheme, isolation):
    """Jailed, the destination's supervisor listens (a jailed VMM's network namespace is empty) and
    hands the accepted stream over."""
    src_qmp, dst_qmp = tmp_path / "src.qmp", tmp_path / "dst.qmp"
    uri = f"tcp:127.0.0.1:{free_port()}" if scheme == "tcp" else f"unix:{tmp_path / 'in.sock'}"
    src = spawn("--kernel", str(tiny_guest("memwriter")), "-m", "64M", "--qmp", f"unix:{src_qmp},server,wait=off")
    dst = spawn("--incoming", uri, "--qmp", f"unix:{dst_qmp},server,wait=off",
                "--exit-file", str(tmp_path / "exit.json"), "--isolation", isolation)
    procs += [src, dst]
    wait_for(src_qmp, src)

    async def scenario() -> tuple[int, int, int, dict]:
        qmp = await connect("src", src_qmp)
        start = await r8(qmp)
        await qmp.execute("migrate-set-parameters", {"downtime-limit": 100, "max-bandwidth": 1 << 30})
        assert (await qmp.execute("query-migrate-parameters"))["downtime-limit"] == 100
        for _ in range(200):                       # the destination listens a moment after it starts
            if scheme == "unix" and (tmp_path / "in.sock").exists() or scheme == "tcp" and _listening(uri):
                break
            await asyncio.sleep(0.05)
        await qmp.execute("migrate", {"uri": uri})
        await event(qmp, "MIGRATION", "completed")
        info = await qmp.execute("query-migrate")
        assert (await qmp.execute("query-status"))["status"] == "postmigrate"
        last = await r8(qmp)
        await qmp.disconnect()
        wait_for(dst_qmp, dst)
        d = await connect("dst", dst_qmp)
        for _ in range(100):                       # the monitor opens just before the vCPUs start
            status = (await d.execute("query-status"))["status"]
            if status != "prelaunch":
                break
            await asyncio.sleep(0.02)
        assert status == "running"
        first = await r8(d)
        await asyncio.sleep(0.5)
        later = await r8(d)
        await d.disconnect()
        return start, last, first, dict(info, later=later)

    start, last, first, info = asyncio.run(scenario())
    assert info["status"] == "completed" and info["downtime"] < 1000
    assert start < last <= first < info["later"], (start, last, first, info["later"])
    assert kvmkit("qmp", str(dst_qmp), "quit").returncode == 0
    assert dst.wait(20) == 0, dst.stderr.read()        # 0x43 would be a failed in-guest checksum
    assert '"status": 0' in (tmp_path / "exit.json").read_text()
    kvmkit("qmp", str(src_qmp), "quit")
    assert src.wait(20) == 0


def _listening(uri: str) -> bool:
    port = int(uri.rsplit(":", 1)[1])
    return any(f":{port:04X} 00000000:0000 0A" in line for line in open("/proc/net/tcp"))


def test_kvmkit_migrate_cli_and_a_killed_destination(tiny_guest, tmp_path, procs):
    src_qmp = tmp_path / "src.qmp"
    src = spawn("--kernel", str(tiny_guest("memwriter")), "-m", "64M", "--qmp", f"unix:{src_qmp},server,wait=off")
    procs.append(src)
    wait_for(src_qmp, src)
    # a destination SIGKILLed mid-stream
    sock = tmp_path / "mig.sock"
    dst = spawn("--incoming", f"unix:{sock}")
    procs.append(dst)
    wait_for(sock, dst)
    mig = subprocess.Popen([*KVMKIT, "migrate", "--qmp", str(src_qmp), "--max-bandwidth", "4M", f"unix:{sock}"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    from kvmkit.monitor.address import parse_qmp_address
    from kvmkit.monitor.client import QmpClient
    deadline = time.monotonic() + 30
    with QmpClient(parse_qmp_address(f"unix:{src_qmp}")) as client:
        while client.command("query-migrate").get("ram", {}).get("transferred", 0) < 1 << 20:
            assert time.monotonic() < deadline and mig.poll() is None, mig.communicate()
            time.sleep(0.05)
    os.kill(dst.pid, signal.SIGKILL)                   # mid-stream: 1 of ~12 MiB sent
    out, err = mig.communicate(timeout=60)
    assert mig.returncode == 1, (out, err)
    assert "the destination closed the connection" in err and "keeps running" in err, err
    assert '"running"' in kvmkit("qmp", str(src_qmp), "query-status").stdout
    # then a real one, with the progress bar (the killed one left its socket file)
    sock = tmp_path / "mig2.sock"
    dst = spawn("--incoming", f"unix:{sock}")
    procs.append(dst)
    wait_for(sock, dst)
    r = kvmkit("migrate", "--qmp", str(src_qmp), "-p", "--max-bandwidth", "1G", f"unix:{sock}")
    assert r.returncode == 0, r.stderr
    assert "migrated to unix:" in r.stdout and "migrate:" in r.stderr and "100%" in r.stderr
    assert '"postmigrate"' in kvmkit("qmp", str(src_qmp), "query-status").stdout
    # a second migrate of a migrated-away VM is refused with the reason
    r = kvmkit("migrate", "--qmp", str(src_qmp), f"unix:{sock}")
    assert r.returncode == 1 and "already migrated away" in r.stderr
    for p in (src, dst):
        p.send_signal(signal.SIGTERM)
        assert p.wait(20) == 0


@pytest.mark.parametrize("argv, message", [
    (["run", "--incoming", "ftp:x"], "expected file:PATH"),
    (["run", "--incoming", "tcp:localhost"], "expected tcp:HOST:PORT"),
    (["run", "--incoming", "file:/nonexistent/stream"], "No such file"),
    (["run", "--incoming", "file:/etc/hostname"], "not a kvmkit migration stream"),
    (["run", "--incoming", "unix:/tmp/x", "--memory", "1G"], "--memory cannot be given"),
    (["run", "--incoming", "unix:/tmp/x", "--restore", "/tmp"], "give one"),
    (["run", "--isolation", "on", "--incoming", "exec:cat /dev/null"], "would run a command inside the jail"),
    (["migrate", "--qmp", "/nonexistent.sock", "ftp:x"], "expected file:PATH"),
    (["migrate", "--qmp", "/nonexistent.sock", "unix:/tmp/x"], ""),
])
def test_bad_input_is_one_line_and_status_1(argv, message):
    r = kvmkit(*argv)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and message in r.stderr, r.stderr
