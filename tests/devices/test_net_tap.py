"""Tap creation and virtio-net against the real kernel, inside a network
namespace the test creates (needs root; no traffic leaves the namespace)."""

from __future__ import annotations

import os
import struct

import pytest

from kvmkit.devices.virtio.attach import attach_device
from kvmkit.devices.virtio.net import VirtioNet
from kvmkit.net.tap import Tap

from .helpers import in_netns, make_context, sh, wait_for
from .pci_driver import VirtioPciDriver, find_slot

GUEST_MAC = bytes.fromhex("525400123456")

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/dev/net/tun"),
                                reason="needs root and /dev/net/tun to create taps in a namespace")


def test_create_named_and_anonymous_tap(netns):
    tap = in_netns(netns, lambda: Tap.open("kvt0"))
    anon = in_netns(netns, lambda: Tap.open(None))
    try:
        assert tap.name == "kvt0" and anon.name.startswith("kvmtap")
        links = sh("ip", "netns", "exec", netns, "ip", "-o", "link")
        assert "kvt0" in links and anon.name in links
        in_netns(netns, anon.set_up)
        assert "UP" in sh("ip", "netns", "exec", netns, "ip", "-o", "link", "show", anon.name)
    finally:
        tap.close()
        anon.close()
    assert "kvt0" not in sh("ip", "netns", "exec", netns, "ip", "-o", "link")


def arp_request(src_mac: bytes, src_ip: str, dst_ip: str) -> bytes:
    ip = lambda s: bytes(int(x) for x in s.split("."))   # noqa: E731
    return (b"\xff" * 6 + src_mac + b"\x08\x06" +
            struct.pack(">HHBBH", 1, 0x0800, 6, 4, 1) + src_mac + ip(src_ip) + bytes(6) + ip(dst_ip))


def test_virtio_net_arp_exchange_with_host_kernel(netns):
    tap = in_netns(netns, lambda: Tap.open("kvt1"))
    sh("ip", "netns", "exec", netns, "ip", "addr", "add", "10.77.0.1/24", "dev", "kvt1")
    sh("ip", "netns", "exec", netns, "ip", "link", "set", "kvt1", "up")
    ctx = make_context()
    dev = VirtioNet(ctx.memory, "net0", tap, GUEST_MAC)
    attach_device(ctx, dev, "pci")
    try:
        drv = VirtioPciDriver(ctx, find_slot(ctx.pio_bus, 0x1AF4, 0x1041))
        drv.enable_msix()
        for v in range(3):
            drv.program_vector(v)
        drv.negotiate()
        assert bytes(drv.device_cfg(i, 1) for i in range(6)) == GUEST_MAC
        assert drv.device_cfg(6, 2) & 1                            # link up
        rx = drv.setup_queue(0, 0x10000, vector=1)
        tx = drv.setup_queue(1, 0x20000, vector=2)
        drv.driver_ok()
        for i in range(4):
            rx.add([(0x100000 + 0x10000 * i, 12, True), (0x100000 + 0x10000 * i + 12, 65536 - 12, True)])
        drv.kick(0)
        frame = bytes(12) + arp_request(GUEST_MAC, "10.77.0.2", "10.77.0.1")
        ctx.memory.write(0x300000, frame)
        tx.add([(0x300000, 12, False), (0x30000c, len(frame) - 12, False)])
        drv.kick(1)
        tx.wait_used(1)
        used = rx.wait_used(1)
        found = False
        for i in range(4):                 # heads are 0, 2, 4, 6: buffer i holds head 2*i
            pkt = ctx.memory.read(0x100000 + 0x10000 * i + 12, 64)
            if pkt[:6] == GUEST_MAC and pkt[12:14] == b"\x08\x06" and pkt[20:22] == b"\x00\x02":
                found = True
                assert pkt[28:32] == bytes([10, 77, 0, 1])
                assert ctx.memory.read_u16(0x100000 + 0x10000 * i + 10) == 1   # num_buffers
                assert (2 * i, 12 + 42) in used or any(n >= 54 for _, n in used)
        assert found, "no ARP reply from the namespace's kernel"
        wait_for(lambda: ctx.irq.msis[1].fired >= 1)
        q = dev.query()
        assert q["tx_packets"] == 1 and q["rx_packets"] >= 1 and q["tap"] == "kvt1"
    finally:
        dev.close()
