"""virtio-vsock (virtio 1.2 §5.10) with Firecracker's host-side convention.

- The guest connects to host port P → we connect to the Unix socket
  ``{uds}_{P}`` (a host listener) and splice the two.
- A host program connects to ``{uds}``, sends ``CONNECT P\\n``; we open a
  connection to guest port P and answer ``OK <host_port>\\n``.

Stream data is flow-controlled by the spec's credit scheme: we advertise
``BUF_ALLOC`` bytes and count what reached the host socket (``fwd_cnt``);
we send the guest no more than its advertised buffer minus what it has not
yet consumed.  Packets for the guest wait in :class:`VsockConn` order until
the guest posts receive buffers; reading from host sockets pauses while
they back up.  Connection logic lives in :mod:`vsock_conn`.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import socket
import struct
from typing import Any

from kvmkit.devices.virtio import iov
from kvmkit.devices.virtio.constants import DeviceId
from kvmkit.devices.virtio.device import VirtioDevice
from kvmkit.devices.virtio.queue import Chain, Virtqueue
from kvmkit.devices.virtio.vsock_conn import (
    HDR, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RESPONSE, OP_RST,
    OP_RW, OP_SHUTDOWN, TYPE_STREAM, Packet, VsockConn)
from kvmkit.errors import HostResourceError, host_error
from kvmkit.memory.guest_memory import GuestMemory

log = logging.getLogger(__name__)

RX, TX, EVENT = 0, 1, 2
MAX_QUEUED = 256                 # packets waiting for rx buffers before host reads pause
EVENT_TRANSPORT_RESET = 0


def _listen(uds: str) -> socket.socket:
    """The host side's listening socket; a stale socket file is replaced, but
    anything else at ``uds`` is refused (deleting a user's file is not ours)."""
    import stat
    try:
        if not stat.S_ISSOCK(os.lstat(uds).st_mode):
            raise HostResourceError(f"--vsock uds={uds}: it exists and is not a socket")
        os.unlink(uds)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise host_error(f"--vsock uds={uds}", exc) from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        sock.bind(uds)
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise host_error(f"--vsock uds={uds}: cannot listen", exc) from None
    return sock


class VirtioVsock(VirtioDevice):
    device_id = DeviceId.VSOCK
    queue_sizes = (128, 128, 16)
    kind = "virtio-vsock"

    def __init__(self, memory: GuestMemory, name: str, cid: int, uds: str) -> None:
        self.cid, self.uds = cid, uds
        self.conns: dict[tuple[int, int], VsockConn] = {}     # (host port, guest port)
        self.outbox: collections.deque[Packet] = collections.deque()
        self._rx_chains: collections.deque[Chain] = collections.deque()
        self._events: collections.deque[Chain] = collections.deque()
        self._next_port = 1 << 30
        self._pending_connects: dict[int, tuple[socket.socket, bytearray]] = {}
        self.listener = _listen(uds)         # first: a bad path must leave nothing open
        super().__init__(memory, name)
        self.io.add(self.listener.fileno(), self._on_accept)

    def config_bytes(self) -> bytes:
        return struct.pack("<Q", self.cid)

    # -- guest → device ------------------------------------------------------
    def handle_chain(self, queue: Virtqueue, chain: Chain) -> int | None:
        if queue.index == RX:
            self._rx_chains.append(chain)
            return None
        if queue.index == EVENT:
            self._events.append(chain)
            return None
        if chain.readable_len >= HDR.size:
            hdr = Packet.parse(iov.gather(chain.readable, HDR.size))
            payload = iov.split(chain.readable, HDR.size)[1]
            self._from_guest(hdr, payload)
        return 0

    def process_queue(self, q: Virtqueue) -> None:
        super().process_queue(q)
        self._flush()

    def _from_guest(self, p: Packet, payload: list[memoryview]) -> None:
        if p.src_cid != self.cid or p.dst_cid != HOST_CID or p.type != TYPE_STREAM:
            if p.op != OP_RST:
                self.send(p.reply(OP_RST))
            return
        key = (p.dst_port, p.src_port)
        conn = self.conns.get(key)
        if p.op == OP_REQUEST:
            if conn is None:
                self._guest_connect(p)
            return
        if conn is None:
            if p.op != OP_RST:
                self.send(p.reply(OP_RST))
            return
        conn.update_peer_credit(p)
        if p.op == OP_RESPONSE:
            conn.established(self)
        elif p.op == OP_RW:
            conn.to_host(self, payload, p.length)
        elif p.op == OP_CREDIT_REQUEST:
            self.send(conn.packet(OP_CREDIT_UPDATE))
        elif p.op == OP_CREDIT_UPDATE:
            conn.resume_reading(self)
        elif p.op == OP_SHUTDOWN:
            conn.peer_shutdown(self, p.flags)
        elif p.op == OP_RST:
            self.drop(conn)

    def _guest_connect(self, p: Packet) -> None:
        path = f"{self.uds}_{p.dst_port}"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            s.connect(path)
        except OSError as exc:
            log.info("%s: guest port %d → %s refused: %s", self.name, p.src_port, path, exc)
            s.close()
            self.send(p.reply(OP_RST))
            return
        s.setblocking(False)
        conn = VsockConn(self.cid, p.dst_port, p.src_port, s)
        conn.update_peer_credit(p)
        self.conns[conn.key] = conn
        self.send(conn.packet(OP_RESPONSE))
        conn.established(self, reply=False)

    # -- host → device -------------------------------------------------------
    def _on_accept(self) -> None:
        try:
            s, _ = self.listener.accept()
        except BlockingIOError:
            return
        s.setblocking(False)
        self._pending_connects[s.fileno()] = (s, bytearray())
        self.io.add(s.fileno(), lambda fd=s.fileno(): self._on_connect_line(fd))

    def _on_connect_line(self, fd: int) -> None:
        s, buf = self._pending_connects[fd]
        try:
            data = s.recv(64)
        except BlockingIOError:
            return
        buf += data
        if b"\n" not in buf and data and len(buf) < 64:
            return
        self.io.remove(fd)
        del self._pending_connects[fd]
        line = bytes(buf).split(b"\n", 1)[0].decode(errors="replace").split()
        with self.lock:
            if len(line) != 2 or line[0] != "CONNECT" or not line[1].isdigit() or not self.running:
                s.close()
                return
            port = self._next_port
            self._next_port = self._next_port + 1 if self._next_port < 0xFFFFFFFF else 1 << 30
            conn = VsockConn(self.cid, port, int(line[1]), s, leftover=bytes(buf).split(b"\n", 1)[1])
            self.conns[conn.key] = conn
            self.send(conn.packet(OP_REQUEST))
            self._flush()

    # -- device → guest ------------------------------------------------------
    def send(self, p: Packet) -> None:
        self.outbox.append(p)

    def backed_up(self) -> bool:
        return len(self.outbox) >= MAX_QUEUED

    def _flush(self) -> None:
        """Fill posted rx buffers from the outbox; interrupt once."""
        q = self.queues[RX]
        pushed = False
        while self.outbox and self._rx_chains:
            chain = self._rx_chains.popleft()
            p = self.outbox[0]
            room = chain.writable_len - HDR.size
            if room < 0:
                q.push(chain.head, 0)
                continue
            if len(p.data) > room:
                now, later = p.split(room)
                self.outbox[0] = later
            else:
                now = self.outbox.popleft()
            n = iov.scatter(chain.writable, now.encode())
            q.push(chain.head, n)
            pushed = True
        if pushed:
            self.interrupt(q)
        if not self.backed_up():
            for conn in list(self.conns.values()):
                conn.resume_reading(self)

    def flush_later(self) -> None:
        """For connection callbacks that run on the I/O thread outside process_queue."""
        self._flush()

    def drop(self, conn: VsockConn) -> None:
        conn.close(self)
        self.conns.pop(conn.key, None)

    def next_host_port(self) -> int:
        return self._next_port

    # -- lifecycle -----------------------------------------------------------
    def on_reset(self) -> None:
        for conn in list(self.conns.values()):
            self.drop(conn)
        self.outbox.clear()
        self._rx_chains.clear()
        self._events.clear()

    def send_transport_reset(self) -> None:
        """After a restore: tell the guest every connection is gone."""
        with self.lock:
            q = self.queues[EVENT]
            if self._events:
                chain = self._events.popleft()
                n = iov.scatter(chain.writable, struct.pack("<I", EVENT_TRANSPORT_RESET))
                q.push(chain.head, n)
                self.interrupt(q)

    def device_state(self) -> dict[str, Any]:
        # Connections are host sockets and cannot be saved: the guest gets a transport reset.
        return {"rx_held": len(self._rx_chains), "ev_held": len(self._events)}

    def load_device_state(self, state: dict[str, Any]) -> None:
        for idx, held in ((RX, state.get("rx_held", 0)), (EVENT, state.get("ev_held", 0))):
            q = self.queues[idx]
            q.last_avail = (q.last_avail - held) & 0xFFFF
        self._rx_chains.clear()
        self._events.clear()
        self.io.call_later(0.01, self.send_transport_reset)

    def close_backend(self) -> None:
        for conn in list(self.conns.values()):
            conn.close(self)
        self.conns.clear()
        for s, _ in self._pending_connects.values():
            s.close()
        self.listener.close()
        try:
            os.unlink(self.uds)
        except OSError:
            pass

    def query(self) -> dict[str, Any]:
        info = super().query()
        info.update({"guest-cid": self.cid, "uds": self.uds, "connections": len(self.conns)})
        return info
