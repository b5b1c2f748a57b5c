"""The migration stream: a magic line, then sections.

Each section is ``type (1 byte) | version (1) | flags (2) | length (4)``,
the payload, and a CRC-32 of header and payload (4), little-endian.  A
reader refuses an unknown type or version, a bad checksum and a short read
with a message that says which section, so a truncated or corrupted stream
is never half-applied: the destination builds nothing from it until the
``STATE`` section (the last before ``END``) has been read and checked.

Sections, in stream order:

``CONFIG``  JSON: the machine's shape (the snapshot's config record, host
            compat, memory regions) -- the destination builds from it.
``RAM``     ``gpa (u64)`` then whole pages: a run of guest pages.
``ZERO``    ``gpa (u64) | pages (u32)``: a run of pages that are all zero.
``STATE``   JSON: the snapshot body (vCPUs, irqchip, clock, devices).
``SYNC``    empty: the source is about to stop the guest; a destination
            with a return path answers ``READY`` once it has applied all
            that came before (so the stop waits for no backlog).
``END``     JSON: ``{"running": bool, "pages": N}`` -- the source's run
            state and how many pages it sent, a last consistency check.

The JSON payloads are those of :mod:`kvmkit.vmm.snapshot` (bytes as
``{"$bytes": hex}``), so a snapshot and a migration stream carry the same
records.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any, BinaryIO, Callable

from kvmkit.errors import ConfigError

MAGIC = b"KVMKIT-MIGRATION\n"
STREAM_VERSION = 1
PAGE = 4096
CONFIG, RAM, ZERO, STATE, END, SYNC = 1, 2, 3, 4, 5, 6
NAMES = {CONFIG: "CONFIG", RAM: "RAM", ZERO: "ZERO", STATE: "STATE", END: "END", SYNC: "SYNC"}
_HEAD = struct.Struct("<BBHI")
_CRC = struct.Struct("<I")
MAX_SECTION = 64 << 20


class StreamError(ConfigError):
    """A migration stream that cannot be read: truncated, damaged, foreign."""


def _json(obj: Any) -> bytes:
    from kvmkit.vmm.snapshot import _encode_bytes
    return json.dumps(obj, separators=(",", ":"), sort_keys=True, default=_encode_bytes).encode()


def _unjson(data: bytes) -> Any:
    from kvmkit.vmm.snapshot import _decode_bytes
    return json.loads(data, object_hook=_decode_bytes)


class StreamWriter:
    """Sections onto a byte sink (``write(bytes)`` of a socket, pipe or file)."""

    def __init__(self, write: Callable[[bytes], Any]) -> None:
        self._write = write
        self.bytes = 0
        self._write_raw(MAGIC + struct.pack("<I", STREAM_VERSION))

    def _write_raw(self, data: bytes | memoryview) -> None:
        self._write(data)
        self.bytes += len(data)

    def section(self, kind: int, *payload: bytes | memoryview) -> None:
        length = sum(len(p) for p in payload)
        head = _HEAD.pack(kind, STREAM_VERSION, 0, length)
        crc = zlib.crc32(head)
        for p in payload:
            crc = zlib.crc32(p, crc)
        self._write_raw(head)
        for p in payload:
            self._write_raw(p)
        self._write_raw(_CRC.pack(crc))

    def json(self, kind: int, obj: Any) -> None:
        self.section(kind, _json(obj))

    def ram(self, gpa: int, pages: bytes | memoryview) -> None:
        # A copy: the guest keeps writing these pages, and the checksum must
        # cover the bytes that are sent (a later pass sends the newer ones).
        data = pages if isinstance(pages, bytes) else bytes(pages)
        self.section(RAM, struct.pack("<Q", gpa), data)

    def zero(self, gpa: int, npages: int) -> None:
        self.section(ZERO, struct.pack("<QI", gpa, npages))


class StreamReader:
    """Sections from a byte source (``readinto``-able file or socket file)."""

    def __init__(self, source: BinaryIO, where: str) -> None:
        self._src = source
        self.where = where
        self.bytes = 0
        try:
            head = self._read(len(MAGIC) + 4, "the stream header")
        except StreamError:
            if not MAGIC.startswith(bytes(self._partial)):
                raise StreamError(f"{where}: not a kvmkit migration stream") from None
            raise
        if head[:len(MAGIC)] != MAGIC:
            raise StreamError(f"{where}: not a kvmkit migration stream")
        (version,) = struct.unpack("<I", head[len(MAGIC):])
        if version != STREAM_VERSION:
            raise StreamError(f"{where}: migration stream version {version}, "
                              f"this kvmkit reads version {STREAM_VERSION}")

    def _read(self, n: int, what: str) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        self._partial = buf
        while got < n:
            try:
                k = self._src.readinto(view[got:])
            except ConnectionResetError:
                raise StreamError(f"{self.where}: the stream ends early, in {what} (after {self.bytes + got} "
                                  "bytes: the source reset the connection)") from None
            except OSError as exc:
                raise StreamError(f"{self.where}: reading {what}: {exc.strerror or exc}") from None
            if not k:
                view.release()
                del buf[got:]
                raise StreamError(f"{self.where}: the stream ends early, in {what} "
                                  f"(after {self.bytes + got} bytes: truncated, or the source went away)")
            got += k
        self.bytes += n
        return buf

    def section(self) -> tuple[int, bytearray]:
        head = self._read(_HEAD.size, "a section header")
        kind, version, _flags, length = _HEAD.unpack(head)
        name = NAMES.get(kind)
        if name is None:
            raise StreamError(f"{self.where}: unknown section type {kind} at byte {self.bytes - _HEAD.size} "
                              "(a damaged stream)")
        if version != STREAM_VERSION:
            raise StreamError(f"{self.where}: {name} section version {version}, this kvmkit reads "
                              f"version {STREAM_VERSION}")
        if length > MAX_SECTION:
            raise StreamError(f"{self.where}: {name} section of {length} bytes (a damaged stream)")
        payload = self._read(length, f"a {name} section")
        (crc,) = _CRC.unpack(self._read(_CRC.size, f"a {name} section's checksum"))
        if zlib.crc32(payload, zlib.crc32(head)) != crc:
            raise StreamError(f"{self.where}: {name} section checksum mismatch at byte "
                              f"{self.bytes - length - 12} (the stream is damaged)")
        return kind, payload

    def expect(self, kind: int) -> bytearray:
        got, payload = self.section()
        if got != kind:
            raise StreamError(f"{self.where}: expected a {NAMES[kind]} section, found {NAMES[got]}")
        return payload

    @staticmethod
    def decode(payload: bytes | bytearray) -> Any:
        return _unjson(bytes(payload))

    @staticmethod
    def ram(payload: bytearray) -> tuple[int, memoryview]:
        (gpa,) = struct.unpack_from("<Q", payload)
        return gpa, memoryview(payload)[8:]

    @staticmethod
    def zero(payload: bytearray) -> tuple[int, int]:
        return struct.unpack_from("<QI", payload)
