"""The wire protocol, byte for byte against QEMU 7.2's behaviour, error paths included."""

from __future__ import annotations

import json
import os
import re
import select
import socket
import struct
import threading
import time

import pytest

from kvmkit.errors import ConfigError
from kvmkit.monitor.server import QmpServer
from kvmkit.vmm.api import RunState
from tests.monitor.conftest import RawQmp

pytestmark = pytest.mark.kvm

NEGOTIATE_FIRST = {"error": {"class": "CommandNotFound",
                             "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}


def generic(desc: str, **extra) -> dict:
    return {"error": {"class": "GenericError", "desc": desc}, **extra}


def test_greeting_has_qemu_shape(raw):
    greeting = raw().greeting
    assert list(greeting) == ["QMP"]
    assert greeting["QMP"]["capabilities"] == []
    version = greeting["QMP"]["version"]
    assert version["qemu"] == {"micro": 0, "minor": 2, "major": 7}
    assert version["package"].startswith("kvmkit-")


def test_commands_before_negotiation_are_refused(raw):
    c = raw()
    assert c.call({"execute": "query-status"}) == NEGOTIATE_FIRST
    assert c.call({"execute": "no-such-command", "id": 1}) == {**NEGOTIATE_FIRST, "id": 1}
    assert c.call({"execute": "query-commands"}) == NEGOTIATE_FIRST
    assert c.call({"execute": "qmp_capabilities", "id": "neg"}) == {"return": {}, "id": "neg"}
    assert c.call({"execute": "qmp_capabilities"}) == {"error": {
        "class": "CommandNotFound",
        "desc": "Capabilities negotiation is already complete, command ignored"}}


def test_capabilities_kvmkit_does_not_offer(raw):
    c = raw()
    assert c.call({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}) == \
        generic("Capability oob not available")
    assert c.call({"execute": "qmp_capabilities", "arguments": {"enable": ["foo"]}}) == \
        generic("Parameter 'enable[0]' does not accept value 'foo'")
    c.negotiate()


@pytest.mark.parametrize("rid", [7, "abc", {"nested": [1, 2]}, None, 1.5])
def test_id_is_echoed_verbatim(raw, rid):
    c = raw().negotiate()
    assert c.call({"execute": "query-kvm", "id": rid}) == {
        "return": {"enabled": True, "present": True}, "id": rid}
    assert c.call({"execute": "nope", "id": rid})["id"] == rid


def test_unknown_command(raw):
    c = raw().negotiate()
    assert c.call({"execute": "nope", "id": 3}) == {
        "error": {"class": "CommandNotFound", "desc": "The command nope has not been found"},
        "id": 3}


@pytest.mark.parametrize("line, desc", [
    (b'{"execute": foo}\n', "JSON parse error, invalid keyword 'foo'"),
    (b'{"execute"}\n', "JSON parse error, missing : in object pair"),
    (b'{"execute": "stop",}\n', "JSON parse error, expecting value"),
    (b'}\n', "JSON parse error, expecting value"),
    (b'[1, 2]\n', "QMP input must be a JSON object"),
    (b'42\n', "QMP input must be a JSON object"),
    (b'"query-status"\n', "QMP input must be a JSON object"),
    (b'{"execute": 1}\n', "QMP input member 'execute' must be a string"),
    (b'{"execute": "stop", "arguments": []}\n', "QMP input member 'arguments' must be an object"),
    (b'{"execute": "stop", "exec-oob": "stop"}\n', "QMP input member 'exec-oob' is unexpected"),
    (b'{"arguments": {}}\n', "QMP input lacks member 'execute'"),
])
def test_bad_input_gets_qemu_errors_before_and_after_negotiation(raw, line, desc):
    c = raw()
    assert c.call(line) == generic(desc)
    c.negotiate()
    assert c.call(line) == generic(desc)
    assert c.call({"execute": "query-status"})["return"]["running"] is True


def test_envelope_errors_still_echo_id(raw):
    c = raw().negotiate()
    assert c.call({"execute": "stop", "foo": 1, "id": 3}) == \
        generic("QMP input member 'foo' is unexpected", id=3)
    assert c.call({"id": 4}) == generic("QMP input lacks member 'execute'", id=4)


@pytest.mark.parametrize("arguments, desc", [
    ({}, "Parameter 'command-line' is missing"),
    ({"command-line": 1}, "Invalid parameter type for 'command-line', expected: string"),
    ({"command-line": True}, "Invalid parameter type for 'command-line', expected: string"),
    ({"command-line": "info status", "cpu-index": "0"},
     "Invalid parameter type for 'cpu-index', expected: integer"),
    ({"command-line": "info status", "cpu-index": True},
     "Invalid parameter type for 'cpu-index', expected: integer"),
    ({"command-line": "info status", "cpu-index": 99}, "Parameter 'cpu-index' expects a CPU number"),
    ({"command-line": "info status", "verbose": True}, "Parameter 'verbose' is unexpected"),
])
def test_argument_errors(raw, arguments, desc):
    c = raw().negotiate()
    assert c.call({"execute": "human-monitor-command", "arguments": arguments, "id": 9}) == \
        generic(desc, id=9)


def test_commands_without_arguments_refuse_extra_ones(raw):
    c = raw().negotiate()
    assert c.call({"execute": "stop", "arguments": {"x": 1}}) == generic("Parameter 'x' is unexpected")
    assert c.call({"execute": "stop", "arguments": {}}) == {"return": {}}


def test_requests_may_span_lines_and_share_reads(raw):
    c = raw().negotiate()
    c.send(b'{"execute":\n "query-kvm",\n "id": 1}{"execute": "query-kvm", "id": 2}\n'
           b"{'execute': 'query-kvm', 'id': 3}")
    assert [c.reply()["id"] for _ in range(3)] == [1, 2, 3]


def test_query_commands_lists_the_table(raw, server):
    c = raw().negotiate()
    names = {entry["name"] for entry in c.call({"execute": "query-commands"})["return"]}
    assert {"qmp_capabilities", "query-version", "query-commands", "query-status", "query-name",
            "query-uuid", "query-kvm", "query-cpus-fast", "query-block", "stop", "cont",
            "system_reset", "system_powerdown", "quit", "human-monitor-command"} <= names


def test_query_shapes(raw, vm):
    c = raw().negotiate()
    assert c.call({"execute": "query-status"}) == {
        "return": {"running": True, "singlestep": False, "status": "running"}}
    assert c.call({"execute": "query-kvm"}) == {"return": {"enabled": True, "present": True}}
    assert c.call({"execute": "query-uuid"}) == {"return": {"UUID": vm.control.uuid}}
    name = c.call({"execute": "query-name"})["return"]
    assert name == ({"name": vm.control.name} if vm.control.name else {})
    assert c.call({"execute": "query-version"})["return"] == c.greeting["QMP"]["version"]
    cpus = c.call({"execute": "query-cpus-fast"})["return"]
    assert cpus and {"cpu-index", "thread-id", "qom-path", "target", "props"} <= set(cpus[0])
    assert isinstance(c.call({"execute": "query-block"})["return"], list)


def test_hmp_subset(raw, vm):
    c = raw().negotiate()

    def hmp(line: str, **args) -> str:
        reply = c.call({"execute": "human-monitor-command",
                        "arguments": {"command-line": line, **args}})
        return reply["return"]

    assert hmp("info status") == "VM status: running\r\n"
    assert hmp("  info   status ") == "VM status: running\r\n"
    thread_id = vm.control.query_cpus()[0]["thread-id"]
    assert hmp("info cpus") == f"* CPU #0: thread_id={thread_id}\r\n"
    c.call({"execute": "stop"})
    regs = hmp("info registers")
    assert regs.startswith("\r\nCPU#0\r\nRAX=")
    for field in ("RIP=", "RFL=", "CS =", "SS =", "GDT=", "CR0=", "CR3=", "CR4=", "EFER="):
        assert field in regs
    values = dict(re.findall(r"(RIP|CR0|EFER)=([0-9a-f]+)", regs))
    rip = vm.control.cpu_registers(0)["rip"]
    assert int(values["RIP"], 16) == rip                 # paused: the same instruction
    assert int(values["CR0"], 16) & 0x80000001 == 0x80000001      # PG, PE
    assert int(values["EFER"], 16) & 0x500 == 0x500                # LME, LMA
    assert hmp("info registers -a", **{"cpu-index": 0}).startswith("\r\nCPU#0\r\n")
    assert hmp("info status") == "VM status: paused\r\n"
    c.call({"execute": "cont"})
    assert hmp("info registers -x") == "registers: unsupported option -x\r\n"
    assert hmp("info status now") == ("status: extraneous characters at the end of line\r\n"
                                      'Try "help info status" for more information\r\n')
    assert hmp("info foo") == "unknown command: 'info foo'\r\n"
    assert hmp("savevm snap1") == "unknown command: 'savevm'\r\n"
    assert hmp("") == ""
    assert "info registers [-a] -- show the cpu registers" in hmp("info")


def test_info_registers_while_running(vm, raw):
    """QEMU reads a running vCPU's registers without a STOP/RESUME; so must kvmkit."""
    c = raw().negotiate()
    regs = c.call({"execute": "human-monitor-command",
                   "arguments": {"command-line": "info registers"}})["return"]
    assert regs.startswith("\r\nCPU#0\r\nRAX=")
    assert int(re.search(r"RIP=([0-9a-f]+)", regs).group(1), 16) >= 0x100000
    assert c.call({"execute": "query-status"})["return"]["status"] == "running"
    readable, _, _ = select.select([c.sock], [], [], 0.3)
    assert not readable, "an event was sent for a register read"


def test_cont_after_quit_needs_reset(raw, vm):
    c = raw().negotiate()
    assert c.call({"execute": "quit"}) == {"return": {}}
    assert vm.control.state is RunState.SHUTDOWN
    assert c.call({"execute": "cont"}) == generic("Resetting the Virtual Machine is required")
    assert c.call({"execute": "query-status"})["return"] == {
        "running": False, "singlestep": False, "status": "shutdown"}
    assert c.call({"execute": "human-monitor-command",
                   "arguments": {"command-line": "info status"}})["return"] == \
        "VM status: paused (shutdown)\r\n"


def test_endless_line_closes_only_that_connection(raw, vm):
    bad, good = raw(), raw().negotiate()
    bad.send(b'{"execute": "query-status", "arguments": {"x": "')
    with pytest.raises((ConnectionError, BrokenPipeError, ConnectionResetError)):
        for _ in range(40):                          # 2.5 MiB, never a newline
            bad.send(b"a" * 65536)
        bad.recv()
    assert good.call({"execute": "query-status"})["return"]["running"] is True
    assert raw().negotiate().call({"execute": "query-kvm"})["return"]["enabled"] is True


def test_client_vanishing_mid_reply_harms_nobody(raw, vm, server):
    other = raw().negotiate()
    for _ in range(5):
        gone = raw().negotiate()
        request = '{"execute": "query-commands"}\n{"execute": "query-cpus-fast"}\n'
        gone.send(request * 300 + '{"execute": "stop"}\n{"execute": "cont"}\n')
        gone.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()                                 # RST while replies are in flight
    deadline = time.monotonic() + 5
    while vm.control.state is not RunState.RUNNING and time.monotonic() < deadline:
        time.sleep(0.01)
    assert other.call({"execute": "query-status"})["return"]["status"] == "running"
    before = vm.progress()
    time.sleep(0.2)
    assert vm.progress() > before
    deadline = time.monotonic() + 5
    while server.client_count > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.client_count == 1


def test_client_that_never_reads_is_dropped(vm, sock_dir):
    path = str(sock_dir / "slow.sock")
    with QmpServer(vm.control, f"unix:{path}", max_output=4096) as srv:
        silent = RawQmp(path).negotiate()
        silent.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        active = RawQmp(path).negotiate()
        for _ in range(400):                         # ~800 events nobody reads on `silent`
            active.call({"execute": "stop"})
            active.call({"execute": "cont"})
            if srv.client_count == 1:
                break
        assert srv.client_count == 1
        assert active.call({"execute": "query-status"})["return"]["running"] is True
        silent.close()
        active.close()


def check_event(message: dict, name: str) -> None:
    assert message["event"] == name and set(message) == {"event", "timestamp"}
    assert set(message["timestamp"]) == {"seconds", "microseconds"}
    assert abs(message["timestamp"]["seconds"] - time.time()) < 60


def test_events_go_to_negotiated_clients_only(raw):
    a, b, pending = raw().negotiate(), raw().negotiate(), raw()
    a.send({"execute": "stop", "id": "s"})
    first, second = a.recv(), a.recv()
    check_event(first, "STOP")                       # QEMU, too, sends STOP before the reply
    assert second == {"return": {}, "id": "s"}
    check_event(b.recv(), "STOP")
    b.send({"execute": "cont"})
    check_event(b.recv(), "RESUME")
    assert b.recv() == {"return": {}}
    check_event(a.recv(), "RESUME")
    readable, _, _ = select.select([pending.sock], [], [], 0.3)
    assert not readable                              # greeting only, no events
    pending.negotiate()


def test_tcp_loopback(vm):
    with QmpServer(vm.control, "tcp:127.0.0.1:0") as srv:
        assert srv.address.port
        with socket.create_connection((srv.address.host, srv.address.port), timeout=5) as s:
            f = s.makefile("rb")
            assert "QMP" in json.loads(f.readline())


def test_non_loopback_tcp_is_refused(vm):
    with pytest.raises(ConfigError, match="loopback"):
        QmpServer(vm.control, "tcp:0.0.0.0:0").start()


def test_stale_socket_is_replaced_and_removed_on_close(vm, sock_dir):
    path = sock_dir / "stale.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    srv = QmpServer(vm.control, f"unix:{path}")
    srv.start()
    client = RawQmp(str(path)).negotiate()
    srv.close()
    assert not path.exists()
    with pytest.raises(ConnectionError):
        client.recv()
    client.close()


def test_refuses_to_replace_a_regular_file(vm, sock_dir):
    path = sock_dir / "file"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="not a socket"):
        QmpServer(vm.control, f"unix:{path}").start()
    assert path.read_text() == "precious"
    assert os.path.exists(path)


@pytest.mark.parametrize("attempt", range(5))
def test_quit_reply_arrives_even_when_the_owner_closes_at_once(vm, sock_dir, attempt):
    """``kvmkit run`` closes its monitors as soon as the VM ends; the client
    that sent ``quit`` must still get its reply, as QEMU's does."""
    path = str(sock_dir / "quit.sock")
    srv = QmpServer(vm.control, f"unix:{path}")
    srv.start()
    closer = threading.Thread(target=lambda: (vm.control.wait(10), srv.close()))
    closer.start()
    client = RawQmp(path).negotiate()
    client.send({"execute": "quit", "id": "q"})
    messages = []
    with pytest.raises(ConnectionError):
        while True:
            messages.append(client.recv())
    closer.join(10)
    client.close()
    assert {"return": {}, "id": "q"} in messages
    assert any(m.get("event") == "SHUTDOWN" for m in messages)
