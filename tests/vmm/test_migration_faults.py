"""Migration faults: each leaves the source running (status failed, an
error naming why) and the destination refusing with a message naming the
problem -- destination dies mid-stream, the connection is cut, another
stream version, a truncated or corrupted stream, a full disk, a stream
for a different machine shape."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import threading
import zlib

import pytest

from kvmkit.vmm.api import RunState
from kvmkit.vmm.migration import stream as st
from kvmkit.vmm.migration.stream import StreamError

from migration_helpers import Destination, count, wait_past

pytestmark = pytest.mark.kvm


@pytest.fixture
def src(tiny_guest, machine):
    m = machine(tiny_guest("memwriter"))
    wait_past(m, 3)
    return m


def failed(m, timeout: float = 30) -> str:
    info = m.migration.wait(timeout)
    assert info["status"] == "failed", info
    assert m.state == RunState.RUNNING, "the source was left stopped"
    wait_past(m, count(m))                      # and it really runs
    return info["error-desc"]


def fake_destination(path: str, behave) -> threading.Thread:
    """A unix listener whose one connection ``behave(conn)`` handles, then closes."""
    lsock = socket.socket(socket.AF_UNIX)
    lsock.bind(path)
    lsock.listen(1)

    def run():
        conn, _ = lsock.accept()
        behave(conn)
        conn.close()
        lsock.close()
    t = threading.Thread(target=run)
    t.start()
    return t


def fail_against(src, tmp_path, behave, bandwidth: int) -> str:
    """Migrate ``src`` to a fake destination; the error the source reports."""
    path = str(tmp_path / "d.sock")
    t = fake_destination(path, behave)
    src.migration.set_parameters(max_bandwidth=bandwidth)
    src.migration.start(f"unix:{path}")
    why = failed(src)
    t.join()
    return why


def test_destination_dies_mid_stream(src, tmp_path):
    """A destination that reads 1 MiB and goes away."""
    def die(conn):
        got = 0
        while got < 1 << 20:
            got += len(conn.recv(65536))
    assert "the destination closed the connection" in fail_against(src, tmp_path, die, 16 << 20)


def _proxy(listen: socket.socket, target: tuple, cut_after: int) -> threading.Thread:
    """Forwards source -> destination and cuts both after ``cut_after`` bytes."""
    def run():
        a, _ = listen.accept()
        b = socket.create_connection(target)
        sent = 0
        while sent < cut_after:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
            sent += len(data)
        for s in (a, b):
            s.shutdown(socket.SHUT_RDWR)
            s.close()
    t = threading.Thread(target=run)
    t.start()
    return t


def test_connection_cut(src):
    dest = Destination("tcp:127.0.0.1:0")
    listen = socket.create_server(("127.0.0.1", 0))
    t = _proxy(listen, ("127.0.0.1", dest.incoming.port), 2 << 20)
    src.migration.set_parameters(max_bandwidth=16 << 20)
    src.migration.start(f"tcp:127.0.0.1:{listen.getsockname()[1]}")
    why = failed(src)
    assert "tcp:127.0.0.1" in why
    t.join()
    listen.close()
    dest.join()
    assert isinstance(dest.error, StreamError) and "the stream ends early" in str(dest.error)


def _saved_stream(src, tmp_path) -> bytes:
    path = tmp_path / "s.stream"
    src.migration.set_parameters(max_bandwidth=4 << 30)
    src.migration.start(f"file:{path}")
    assert src.migration.wait(60)["status"] == "completed"
    src.resume()
    return path.read_bytes()


def _refused(tmp_path, data: bytes) -> str:
    bad = tmp_path / "bad.stream"
    bad.write_bytes(data)
    dest = Destination(f"file:{bad}")
    dest.join()
    assert dest.arrival is None and isinstance(dest.error, StreamError), dest.error
    return str(dest.error)


def _sections(data: bytes):
    """(offset, type, payload) of every section."""
    off = len(st.MAGIC) + 4
    while off < len(data):
        kind, _v, _f, length = struct.unpack_from("<BBHI", data, off)
        yield off, kind, data[off + 8:off + 8 + length]
        off += 8 + length + 4


def _with_section(data: bytes, off: int, kind: int, payload: bytes, version: int = st.STREAM_VERSION) -> bytes:
    """Replace the section at ``off`` with a well-formed one (a valid CRC)."""
    _k, _v, _f, length = struct.unpack_from("<BBHI", data, off)
    head = struct.pack("<BBHI", kind, version, 0, len(payload))
    crc = struct.pack("<I", zlib.crc32(payload, zlib.crc32(head)))
    return data[:off] + head + payload + crc + data[off + 8 + length + 4:]


def test_version_truncation_corruption_and_shape(src, tmp_path):
    data = _saved_stream(src, tmp_path)
    assert len(list(_sections(data))) > 3
    head = len(st.MAGIC)
    assert "migration stream version 999" in _refused(
        tmp_path, data[:head] + struct.pack("<I", 999) + data[head + 4:])
    off, kind, payload = next(x for x in _sections(data) if x[1] == st.STATE)
    assert "STATE section version 7" in _refused(tmp_path, _with_section(data, off, kind, payload, version=7))
    assert "the stream ends early" in _refused(tmp_path, data[:len(data) // 2])
    assert "the stream ends early" in _refused(tmp_path, data[:-3])
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0x40
    assert "checksum mismatch" in _refused(tmp_path, bytes(flipped))
    assert "not a kvmkit migration stream" in _refused(tmp_path, b"QEVM" + data[4:])
    # a different machine shape: CONFIG says 128 MiB, the regions are 64 MiB's
    off, kind, payload = next(x for x in _sections(data) if x[1] == st.CONFIG)
    rec = json.loads(payload)
    rec["config"]["memory"] = 128 << 20
    why = _refused(tmp_path, _with_section(data, off, kind, json.dumps(rec).encode()))
    assert "different machine shape" in why and "128 MiB" in why
    rec = json.loads(payload)
    rec["cpus"] = 2
    assert "has 2 vCPUs" in _refused(tmp_path, _with_section(data, off, kind, json.dumps(rec).encode()))
    # state for 2 vCPUs in a 1-vCPU machine
    off, kind, payload = next(x for x in _sections(data) if x[1] == st.STATE)
    body = json.loads(payload)
    body["vcpus"] = body["vcpus"] * 2
    assert "2 vCPUs" in _refused(tmp_path, _with_section(data, off, kind, json.dumps(body).encode()))
    # RAM outside the machine
    off, kind, payload = next(x for x in _sections(data) if x[1] == st.RAM)
    assert "outside this machine's memory" in _refused(
        tmp_path, _with_section(data, off, kind, struct.pack("<Q", 1 << 40) + payload[8:]))
    # the source ran throughout
    assert src.state == RunState.RUNNING
    wait_past(src, count(src))


def test_disk_full_while_saving(src, tmp_path):
    mnt = tmp_path / f"full{os.getpid()}"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2M", "tmpfs", str(mnt)], check=True)
    try:
        src.migration.set_parameters(max_bandwidth=4 << 30)
        src.migration.start(f"file:{mnt / 'vm.stream'}")
        why = failed(src)
        assert "no space left on the device" in why
        assert not (mnt / "vm.stream").exists(), "a partial stream was left behind"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_refused_destination_and_bad_requests(src, tmp_path):
    """The destination refuses after the first bytes: the source hears why and runs on."""
    def refuse(conn):
        conn.recv(65536)
        conn.sendall(b"ERR kernel /nope: no such file\n")
    assert "the destination refused the stream: kernel /nope" in fail_against(src, tmp_path, refuse, 4 << 30)
    from kvmkit.errors import ConfigError
    with pytest.raises(ConfigError, match="expected file:PATH"):
        src.migration.start("ftp:x")
    src.migration.start(f"unix:{tmp_path / 'nobody'}")
    assert "No such file" in failed(src) or "Connection refused" in src.migration.query()["error-desc"]
