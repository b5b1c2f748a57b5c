"""``kvmkit qmp PATH COMMAND [ARGS]`` and the ``--qmp`` helpers ``run`` uses."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from kvmkit.cli.main import main as kvmkit_main
from kvmkit.cli.qmp import start_monitor
from kvmkit.monitor.client import QmpClient

pytestmark = pytest.mark.kvm
REPO = Path(__file__).resolve().parents[2]


def main(argv: list[str]) -> int:
    return kvmkit_main(["qmp", *argv])


def test_prints_the_return_as_json(server, capsys):
    assert main([server.address.path, "query-status"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "running": True, "singlestep": False, "status": "running"}


def test_arguments_as_json(server, capsys):
    assert main([f"unix:{server.address.path}", "human-monitor-command",
                 '{"command-line": "info status"}']) == 0
    assert json.loads(capsys.readouterr().out) == "VM status: running\r\n"


def test_error_desc_on_stderr_and_status_1(server, capsys):
    assert main([server.address.path, "no-such-command"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "The command no-such-command has not been found"


@pytest.mark.parametrize("args", ["[1]", "{not json"])
def test_bad_args_are_a_usage_error(server, capsys, args):
    assert main([server.address.path, "stop", args]) == 2
    assert "ARGS" in capsys.readouterr().err


def test_unreachable_socket(sock_dir, capsys):
    assert main([str(sock_dir / "nobody-listens"), "query-status"]) == 1
    assert "cannot connect to QMP" in capsys.readouterr().err


def test_runs_from_the_kvmkit_command(server, vm):
    done = subprocess.run([sys.executable, "-m", "kvmkit.cli.main", "qmp", server.address.path,
                           "stop"],
                          cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {}
    assert vm.control.state.value == "paused"


def test_start_monitor_waits_for_a_client_when_asked(vm, sock_dir):
    path = sock_dir / "wait.sock"
    started: list = []
    thread = threading.Thread(target=lambda: started.append(
        start_monitor(vm.control, f"unix:{path},server,wait=on")), daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while not path.exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.1)
    assert not started, "start_monitor returned before any client connected"
    with QmpClient(f"unix:{path}") as client:
        thread.join(5)
        assert started
        assert client.command("query-kvm") == {"enabled": True, "present": True}
    started[0].close()


def test_start_monitor_without_wait_returns_at_once(vm, sock_dir):
    server = start_monitor(vm.control, f"unix:{sock_dir / 'nowait.sock'},server,wait=off")
    try:
        with QmpClient(server.address) as client:
            assert client.command("query-name") == {"name": "qmp-test"}
    finally:
        server.close()
