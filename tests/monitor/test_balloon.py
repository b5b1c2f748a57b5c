"""QMP balloon and query-balloon against a real VM with a virtio-balloon
device (the tiny guest has no driver: the device records the target the
driver would be asked for), and QEMU's error without one."""

from __future__ import annotations

import pytest

from kvmkit.devices.virtio.config import BalloonSpec, VirtioSpecs
from kvmkit.monitor.server import QmpServer

from .conftest import RawQmp

pytestmark = pytest.mark.kvm
MB = 1 << 20


def test_balloon_sets_the_device_target(tiny_guest, machine, sock_dir):
    m = machine(tiny_guest("counter"), memory="128M", virtio=VirtioSpecs(balloon=BalloonSpec()))
    with QmpServer(m, f"unix:{sock_dir / 'q.sock'}") as srv:
        c = RawQmp(str(srv.address.path)).negotiate()
        try:
            assert c.call({"execute": "query-balloon"}) == {"return": {"actual": 128 * MB}}
            assert c.call({"execute": "balloon", "arguments": {"value": 96 * MB}}) == {"return": {}}
            dev = next(d for d in m.virtio_devices if d.kind == "virtio-balloon")
            assert dev.num_pages * 4096 == 32 * MB        # the balloon to inflate, as the driver reads it
            bad = c.call({"execute": "balloon", "arguments": {"value": 0}})
            assert bad["error"]["desc"] == "Parameter 'target' expects a size"
            wrong = c.call({"execute": "balloon", "arguments": {"value": "1G"}})
            assert wrong["error"]["class"] == "GenericError"
        finally:
            c.close()


def test_without_a_balloon_device(tiny_guest, machine, sock_dir):
    m = machine(tiny_guest("counter"))
    with QmpServer(m, f"unix:{sock_dir / 'q.sock'}") as srv:
        c = RawQmp(str(srv.address.path)).negotiate()
        try:
            for cmd in ({"execute": "query-balloon"}, {"execute": "balloon", "arguments": {"value": MB}}):
                err = c.call(cmd)["error"]
                assert err == {"class": "DeviceNotActive", "desc": "No balloon device has been activated"}
        finally:
            c.close()
