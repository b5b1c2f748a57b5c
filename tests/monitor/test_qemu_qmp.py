"""QEMU's own client library (qemu.qmp) steering a real kvmkit VM unchanged."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable

import pytest
from qemu.qmp import ExecuteError, QMPClient

from kvmkit.vmm.api import ExitReason, RunState

pytestmark = pytest.mark.kvm


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))


async def next_event(client: QMPClient, name: str) -> dict[str, Any]:
    """The next event called ``name`` (others are skipped), as a plain dict."""
    while True:
        event = await asyncio.wait_for(client.events.get(), 5)
        if event["event"] == name:
            return dict(event)


async def connect(path: str, name: str = "test") -> QMPClient:
    client = QMPClient(name)
    await client.connect(path)
    return client


async def advancing(progress, seconds: float = 0.1) -> bool:
    before = progress()
    await asyncio.sleep(seconds)
    return progress() > before


def test_stop_cont_quit(vm, server):
    async def scenario() -> None:
        qmp = await connect(server.address.path)
        assert qmp.greeting is not None
        assert qmp.greeting.QMP.version["qemu"]["major"] == 7
        assert await qmp.execute("query-status") == {
            "running": True, "singlestep": False, "status": "running"}
        assert await advancing(vm.progress)

        assert await qmp.execute("stop") == {}
        assert (await next_event(qmp, "STOP"))["event"] == "STOP"
        assert (await qmp.execute("query-status"))["status"] == "paused"
        assert vm.control.state is RunState.PAUSED
        assert not await advancing(vm.progress), "the guest ran while stopped"

        assert await qmp.execute("cont") == {}
        assert (await next_event(qmp, "RESUME"))["event"] == "RESUME"
        assert (await qmp.execute("query-status"))["running"] is True
        assert await advancing(vm.progress)

        with pytest.raises(ExecuteError) as info:
            await qmp.execute("no-such-command")
        assert info.value.error_class == "CommandNotFound"

        assert await qmp.execute("quit") == {}
        shutdown = await next_event(qmp, "SHUTDOWN")
        assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
        await qmp.disconnect()

    run(scenario())
    assert vm.control.wait(5) is ExitReason.HOST_QUIT


def test_two_clients_at_once(vm, server):
    async def scenario() -> None:
        a = await connect(server.address.path, "a")
        b = await connect(server.address.path, "b")
        stop, status = await asyncio.gather(a.execute("stop"), b.execute("query-status"))
        assert stop == {} and status["status"] in ("running", "paused")
        for client in (a, b):
            assert (await next_event(client, "STOP"))["event"] == "STOP"
        assert (await b.execute("query-status"))["status"] == "paused"
        await b.execute("cont")
        for client in (a, b):
            assert (await next_event(client, "RESUME"))["event"] == "RESUME"
        await a.disconnect()                     # one leaving does not disturb the other
        assert (await b.execute("query-status"))["status"] == "running"
        names = {c["name"] for c in await b.execute("query-commands")}
        assert "human-monitor-command" in names
        await b.disconnect()

    run(scenario())


def test_reset_while_paused_restarts_the_guest(vm, server):
    async def scenario() -> None:
        qmp = await connect(server.address.path)
        await asyncio.sleep(0.05)
        await qmp.execute("stop")
        assert vm.progress() > 0
        await qmp.execute("system_reset")
        reset = await next_event(qmp, "RESET")
        assert reset["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
        assert (await qmp.execute("query-status"))["status"] == "paused"
        assert vm.progress() == 0                # RAM cleared, guest reloaded, not yet run
        await qmp.execute("cont")
        assert await advancing(vm.progress)
        await qmp.disconnect()

    run(scenario())


def test_powerdown_reaches_the_guest_as_an_event(vm, server):
    async def scenario() -> None:
        qmp = await connect(server.address.path)
        await qmp.execute("system_powerdown")
        assert "data" not in await next_event(qmp, "POWERDOWN")
        # The counter guest ignores the request: it keeps running, as a guest may.
        assert (await qmp.execute("query-status"))["running"] is True
        await qmp.disconnect()

    run(scenario())


def test_hmp_through_qemu_qmp(vm, server):
    async def scenario() -> None:
        qmp = await connect(server.address.path)
        text = await qmp.execute("human-monitor-command", {"command-line": "info status"})
        assert text == "VM status: running\r\n"
        await qmp.execute("stop")
        regs = await qmp.execute("human-monitor-command", {"command-line": "info registers"})
        assert "RIP=" in regs and "EFER=" in regs
        await qmp.disconnect()

    run(scenario())


def test_stop_latency_is_bounded(vm, server):
    """stop returns only once every vCPU is out of KVM_RUN, and quickly."""
    async def scenario() -> float:
        qmp = await connect(server.address.path)
        started = time.perf_counter()
        await qmp.execute("stop")
        elapsed = time.perf_counter() - started
        frozen = vm.progress()
        await asyncio.sleep(0.05)
        assert vm.progress() == frozen
        await qmp.disconnect()
        return elapsed

    assert run(scenario()) < 2.0
