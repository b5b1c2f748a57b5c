"""End to end with the fast Linux guest: stop and resume mid-boot, reset, and
(in a restore of the session's boot at its shell) powerdown.

Uses the cached fast guest (``kvmkit guest build fast``); skipped when it is
not built, since building it takes minutes.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from qemu.qmp import QMPClient

from kvmkit.errors import ConfigError
from kvmkit.guest.assets import GuestAssets, fast_guest
from kvmkit.monitor.server import QmpServer
from kvmkit.vmm.api import ExitReason

pytestmark = [pytest.mark.kvm, pytest.mark.slow]


@pytest.fixture
def linux(machine):
    try:
        assets: GuestAssets = fast_guest(build=False, progress=False)
    except ConfigError as error:
        pytest.skip(str(error))
    return machine(assets.vmlinux, initrd=assets.initrd, cmdline=assets.cmdline, memory="256M")


def test_stop_resume_mid_boot_and_reset(linux, sock_dir):
    linux.console.expect(r"Linux version", timeout=120)

    async def scenario(path: str) -> None:
        qmp = QMPClient("e2e")
        await qmp.connect(path)
        await qmp.execute("stop")
        frozen = len(linux.console.output)
        await asyncio.sleep(2)
        assert len(linux.console.output) == frozen, "the guest printed while stopped"
        await qmp.execute("cont")
        deadline = time.monotonic() + 120
        while len(linux.console.output) == frozen:      # it goes on booting
            assert time.monotonic() < deadline, "no console output after cont"
            await asyncio.sleep(0.1)
        await qmp.execute("system_reset")
        event = await asyncio.wait_for(qmp.events.get(), 10)
        while event["event"] != "RESET":
            event = await asyncio.wait_for(qmp.events.get(), 10)
        assert event["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
        await qmp.disconnect()

    with QmpServer(linux, f"unix:{sock_dir / 'linux.sock'}") as server:
        asyncio.run(scenario(server.address.path))
    linux.console.expect(r"Linux version", timeout=120)   # it booted again
    assert linux.running


@pytest.mark.userspace
def test_graceful_powerdown(fast_shell, sock_dir):
    """system_powerdown from a real QMP client: the guest's acpid runs
    poweroff (the syscall trap lets user space run on emulating hosts).
    The guest is the session's boot at its shell, restored."""
    linux = fast_shell.restore()

    async def scenario(path: str) -> None:
        qmp = QMPClient("powerdown")
        await qmp.connect(path)
        await qmp.execute("system_powerdown")
        await qmp.disconnect()

    try:
        with QmpServer(linux, f"unix:{sock_dir / 'linux.sock'}") as server:
            asyncio.run(scenario(server.address.path))
        assert linux.wait(300) == ExitReason.POWEROFF, linux.console.text[-2000:]
        assert linux.exit_status == 0
    finally:
        linux.close()
