"""virtio-vsock with Firecracker's Unix-socket convention, the guest played by the test."""

from __future__ import annotations

import socket
import time

import pytest

from kvmkit.devices.virtio.attach import attach_device
from kvmkit.devices.virtio.vsock import VirtioVsock
from kvmkit.devices.virtio.vsock_conn import (
    HDR, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, Packet)

from .helpers import make_context
from .pci_driver import VirtioPciDriver, find_slot

CID = 42


class Guest:
    def __init__(self, ctx, drv) -> None:
        self.ctx, self.drv = ctx, drv
        drv.negotiate()
        assert drv.device_cfg(0, 8) == CID
        self.rx = drv.setup_queue(0, 0x10000)
        self.tx = drv.setup_queue(1, 0x20000)
        self.ev = drv.setup_queue(2, 0x30000)
        drv.driver_ok()
        self.bufs = {}
        for i in range(16):
            addr = 0x100000 + 0x2000 * i
            head = self.rx.add([(addr, 44, True), (addr + 44, 4096, True)])
            self.bufs[head] = addr
        drv.kick(0)
        self.txbuf = 0x400000
        self.backlog: list[tuple[int, int]] = []

    def send(self, p: Packet) -> None:
        raw = p.encode()
        self.ctx.memory.write(self.txbuf, raw)
        self.tx.add([(self.txbuf, 44, False)] + ([(self.txbuf + 44, len(raw) - 44, False)] if p.data else []))
        self.drv.kick(1)
        self.tx.wait_used(1)

    def recv(self, timeout: float = 5.0) -> Packet:
        if not self.backlog:
            self.backlog += self.rx.wait_used(1, timeout)
        head, n = self.backlog.pop(0)
        addr = self.bufs.pop(head)
        p = Packet.parse(self.ctx.memory.read(addr, 44))
        data = self.ctx.memory.read(addr + 44, n - 44)
        new = self.rx.add([(addr, 44, True), (addr + 44, 4096, True)])
        self.bufs[new] = addr
        self.drv.kick(0)
        return Packet(p.src_cid, p.dst_cid, p.src_port, p.dst_port, p.op, p.type, p.flags,
                      p.buf_alloc, p.fwd_cnt, p.length, data)


@pytest.fixture
def vsock(tmp_path):
    ctx = make_context()
    uds = str(tmp_path / "v.sock")
    dev = VirtioVsock(ctx.memory, "vsock0", CID, uds)
    attach_device(ctx, dev, "pci")
    guest = Guest(ctx, VirtioPciDriver(ctx, find_slot(ctx.pio_bus, 0x1AF4, 0x1040 + 19)))
    yield guest, uds, dev
    dev.close()


def pkt(op, sport, dport, data=b"", flags=0):
    return Packet(CID, 2, sport, dport, op, flags=flags, buf_alloc=65536, fwd_cnt=0, data=data)


def test_guest_connects_to_host_listener(vsock):
    guest, uds, dev = vsock
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(f"{uds}_5000")
    srv.listen(1)
    guest.send(pkt(OP_REQUEST, 1025, 5000))
    assert guest.recv().op == OP_RESPONSE
    conn, _ = srv.accept()
    guest.send(pkt(OP_RW, 1025, 5000, b"ping"))
    conn.settimeout(5)
    assert conn.recv(16) == b"ping"
    conn.sendall(b"pong")
    p = guest.recv()
    assert (p.op, p.data, p.dst_port, p.src_port) == (OP_RW, b"pong", 1025, 5000)
    conn.close()                                        # host EOF → SHUTDOWN to the guest
    assert guest.recv().op == OP_SHUTDOWN
    guest.send(pkt(OP_RST, 1025, 5000))
    srv.close()


def test_guest_connect_refused_gets_rst(vsock):
    guest, uds, dev = vsock
    guest.send(pkt(OP_REQUEST, 1026, 6000))
    assert guest.recv().op == OP_RST


def test_host_connects_to_guest(vsock):
    guest, uds, dev = vsock
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(uds)
    s.sendall(b"CONNECT 1234\nearly")
    req = guest.recv()
    assert req.op == OP_REQUEST and req.dst_port == 1234 and req.dst_cid == CID
    guest.send(pkt(OP_RESPONSE, 1234, req.src_port))
    s.settimeout(5)
    line = b""
    while not line.endswith(b"\n"):
        line += s.recv(1)
    assert line == f"OK {req.src_port}\n".encode()
    assert guest.recv().data == b"early"
    big = bytes(range(256)) * 64                       # 16 KiB: several rx buffers
    s.sendall(big)
    got = b""
    while len(got) < len(big):
        got += guest.recv().data
    assert got == big
    guest.send(pkt(OP_RW, 1234, req.src_port, b"back"))
    assert s.recv(4) == b"back"
    s.close()


def test_malformed_header_ignored(vsock):
    guest, uds, dev = vsock
    guest.ctx.memory.write(guest.txbuf, b"\x00" * 10)
    guest.tx.add([(guest.txbuf, 10, False)])
    guest.drv.kick(1)
    guest.tx.wait_used(1)
    time.sleep(0.05)
    assert dev.running
    assert HDR.size == 44
