"""One vsock stream between a guest port and a host Unix socket: the packet
header, the credit arithmetic and the splice in both directions.

Runs on the vsock device's I/O thread with the device lock held.
"""

from __future__ import annotations

import logging
import select
import socket
import struct
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from kvmkit.devices.virtio import iov

if TYPE_CHECKING:
    from kvmkit.devices.virtio.vsock import VirtioVsock

log = logging.getLogger(__name__)

HDR = struct.Struct("<QQIIIHHIII")           # virtio_vsock_hdr, 44 bytes
HOST_CID = 2
TYPE_STREAM = 1
OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN = 1, 2, 3, 4
OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST = 5, 6, 7
SHUTDOWN_RCV, SHUTDOWN_SEND = 1, 2
BUF_ALLOC = 256 * 1024
READ_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Packet:
    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    op: int
    type: int = TYPE_STREAM
    flags: int = 0
    buf_alloc: int = 0
    fwd_cnt: int = 0
    length: int = 0
    data: bytes = b""

    @classmethod
    def parse(cls, raw: bytes) -> "Packet":
        sc, dc, sp, dp, length, typ, op, flags, ba, fc = HDR.unpack(raw)
        return cls(sc, dc, sp, dp, op, typ, flags, ba, fc, length)

    def encode(self) -> bytes:
        return HDR.pack(self.src_cid, self.dst_cid, self.src_port, self.dst_port, len(self.data),
                        self.type, self.op, self.flags, self.buf_alloc, self.fwd_cnt) + self.data

    def reply(self, op: int) -> "Packet":
        """A header-only answer to this packet (an RST to a stranger)."""
        return Packet(self.dst_cid, self.src_cid, self.dst_port, self.src_port, op, self.type)

    def split(self, n: int) -> tuple["Packet", "Packet"]:
        return replace(self, data=self.data[:n]), replace(self, data=self.data[n:])


class VsockConn:
    """The host side of one stream; ``key`` is (host port, guest port)."""

    def __init__(self, guest_cid: int, host_port: int, guest_port: int, sock: socket.socket,
                 leftover: bytes = b"") -> None:
        self.guest_cid, self.host_port, self.guest_port = guest_cid, host_port, guest_port
        self.sock = sock
        self.fd = sock.fileno()
        self.state = "connecting"
        self.tx_cnt = 0                 # bytes sent to the guest
        self.fwd_cnt = 0                # bytes from the guest delivered to the host socket
        self._reported_fwd = 0
        self.peer_buf_alloc = 0
        self.peer_fwd_cnt = 0
        self.out = bytearray()          # guest → host bytes the socket has not taken yet
        self.leftover = leftover        # host bytes that followed the CONNECT line
        self.eof = False
        self._shut_wr = False
        self._events = 0

    @property
    def key(self) -> tuple[int, int]:
        return (self.host_port, self.guest_port)

    def packet(self, op: int, data: bytes = b"", flags: int = 0) -> Packet:
        self._reported_fwd = self.fwd_cnt
        return Packet(HOST_CID, self.guest_cid, self.host_port, self.guest_port, op,
                      flags=flags, buf_alloc=BUF_ALLOC, fwd_cnt=self.fwd_cnt & 0xFFFFFFFF, data=data)

    def update_peer_credit(self, p: Packet) -> None:
        self.peer_buf_alloc, self.peer_fwd_cnt = p.buf_alloc, p.fwd_cnt

    def credit(self) -> int:
        return max(0, self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & 0xFFFFFFFF))

    # -- state -------------------------------------------------------------
    def established(self, dev: "VirtioVsock", reply: bool = True) -> None:
        if self.state != "connecting":
            return
        self.state = "established"
        if reply:
            try:
                self.sock.send(f"OK {self.host_port}\n".encode())
            except OSError:
                dev.send(self.packet(OP_RST))
                dev.drop(self)
                return
        if self.leftover:
            self._to_guest(dev, self.leftover)
            self.leftover = b""
        self._update_poll(dev)

    def peer_shutdown(self, dev: "VirtioVsock", flags: int) -> None:
        if flags & SHUTDOWN_SEND and not self.out:
            self._shutdown_wr()
        if flags & SHUTDOWN_SEND:
            self._shut_wr = True
        if flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND:
            dev.send(self.packet(OP_RST))
            dev.drop(self)

    def _shutdown_wr(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self, dev: "VirtioVsock") -> None:
        if self._events:
            dev.io.remove(self.fd)
            self._events = 0
        self.state = "closed"
        self.sock.close()

    # -- data ----------------------------------------------------------------
    def to_host(self, dev: "VirtioVsock", payload: list[memoryview], length: int) -> None:
        if self.state != "established":
            return
        n = min(length, iov.total(payload), BUF_ALLOC)
        for v in iov.split(payload, n)[0]:
            self.out += v
        self._write(dev)

    def _write(self, dev: "VirtioVsock") -> None:
        while self.out:
            try:
                n = self.sock.send(self.out)
            except BlockingIOError:
                break
            except OSError as exc:
                log.debug("vsock %s: host socket write failed: %s", self.key, exc)
                dev.send(self.packet(OP_RST))
                dev.drop(self)
                return
            del self.out[:n]
            self.fwd_cnt += n
        if not self.out and self._shut_wr:
            self._shutdown_wr()
        if self.fwd_cnt - self._reported_fwd >= BUF_ALLOC // 4:
            dev.send(self.packet(OP_CREDIT_UPDATE))
        self._update_poll(dev)

    def _to_guest(self, dev: "VirtioVsock", data: bytes) -> None:
        self.tx_cnt += len(data)
        dev.send(self.packet(OP_RW, data))

    def _read(self, dev: "VirtioVsock") -> None:
        while self.state == "established" and not self.eof and not dev.backed_up():
            room = self.credit()
            if room <= 0:
                dev.send(self.packet(OP_CREDIT_REQUEST))
                break
            try:
                data = self.sock.recv(min(room, READ_CHUNK))
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self.eof = True
                dev.send(self.packet(OP_SHUTDOWN, flags=SHUTDOWN_RCV | SHUTDOWN_SEND))
                break
            self._to_guest(dev, data)
        self._update_poll(dev)

    def resume_reading(self, dev: "VirtioVsock") -> None:
        self._update_poll(dev)

    def _on_event(self, dev: "VirtioVsock") -> None:
        with dev.lock:
            if self.state == "closed":
                return
            if self.out:
                self._write(dev)
            if self.state == "established":
                self._read(dev)
            dev.flush_later()

    def _update_poll(self, dev: "VirtioVsock") -> None:
        if self.state != "established":
            return
        want = 0
        if not self.eof and self.credit() > 0 and not dev.backed_up():
            want |= select.EPOLLIN
        if self.out:
            want |= select.EPOLLOUT
        if want == self._events:
            return
        if want:
            dev.io.add(self.fd, lambda: self._on_event(dev), want)
        else:
            dev.io.remove(self.fd)
        self._events = want
