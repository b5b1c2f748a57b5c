"""The console's host side on a unix socket: nothing a client sends or the
guest prints is lost to start-up order, and a client that stops reading
does not stall the guest."""

from __future__ import annotations

import socket
import time

from kvmkit.vmm.config import SerialSpec
from kvmkit.vmm.console import Console


def _client(path: str) -> socket.socket:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.connect(path)
    c.settimeout(5)
    return c


def test_input_sent_before_the_uart_is_attached_is_delivered(tmp_path):
    path = str(tmp_path / "c.sock")
    con = Console(SerialSpec.parse(f"unix:{path}"))
    try:
        c = _client(path)                 # the path exists only once it listens
        c.sendall(b"early")
        time.sleep(0.2)                   # the VM is "still being built"
        got = []
        con.attach_input(got.append)
        c.sendall(b" late")
        deadline = time.monotonic() + 5
        while b"".join(got) != b"early late":
            assert time.monotonic() < deadline, got
            time.sleep(0.01)
    finally:
        con.close()


def test_first_client_gets_output_printed_before_it_connected(tmp_path):
    path = str(tmp_path / "c.sock")
    con = Console(SerialSpec.parse(f"unix:{path}"))
    try:
        con.write(b"boot banner\r\n")
        c = _client(path)
        got = b""
        while b"banner" not in got:
            got += c.recv(100)
        con.write(b"more")
        while b"more" not in got:
            got += c.recv(100)
        assert got == b"boot banner\r\nmore"     # each byte once
        second = _client(path)                     # later clients: live output only
        time.sleep(0.2)
        con.write(b"!")
        assert second.recv(100) == b"!"
    finally:
        con.close()


def test_a_client_that_stops_reading_does_not_block_output(tmp_path):
    path = str(tmp_path / "c.sock")
    con = Console(SerialSpec.parse(f"unix:{path}"))
    try:
        idle = _client(path)                   # never reads
        time.sleep(0.2)
        t = time.monotonic()
        for _ in range(4096):
            con.write(b"x" * 1024)             # 4 MiB: far beyond the socket buffer
        assert time.monotonic() - t < 5
        assert len(con.output) >= 4 << 20
        idle.close()
    finally:
        con.close()


def test_a_first_client_that_never_reads_its_replay_does_not_block_output(tmp_path):
    """The replay of earlier output to the first client was a blocking
    sendall under the console lock: with more than a socket buffer of
    output before it connected (a long boot log) and a client that never
    read, every later guest write (a vCPU in the UART) waited forever."""
    path = str(tmp_path / "c.sock")
    con = Console(SerialSpec.parse(f"unix:{path}"))
    try:
        early = bytes(range(256)) * 2048                  # 512 KiB, past any socket buffer
        con.write(early)
        idle = _client(path)
        time.sleep(0.3)                                   # the replay has started
        t = time.monotonic()
        for _ in range(256):
            con.write(b"y" * 1024)
        assert time.monotonic() - t < 5
        got = bytearray()                                 # a late reader still gets it all, in order
        idle.settimeout(5)
        while len(got) < len(early) + (256 << 10):
            chunk = idle.recv(1 << 16)
            assert chunk, len(got)
            got += chunk
        assert bytes(got) == early + b"y" * (256 << 10)
        idle.close()
    finally:
        con.close()
