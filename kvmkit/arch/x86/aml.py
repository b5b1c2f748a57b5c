"""Just enough ACPI Machine Language (ACPI 6.x, chapter 20) to write a small
DSDT by hand: names, integers, strings, packages, buffers, devices and
scopes, plus the resource descriptors (chapter 6.4) a PCI root bridge's
``_CRS`` needs.

Each function returns the encoded bytes, so a table is a concatenation of
calls; nothing here evaluates AML.  The encodings were checked against
``iasl -d`` (tests/arch/test_acpi.py decompiles what we build).
"""

from __future__ import annotations

import struct

ZERO_OP, ONE_OP, ONES_OP = 0x00, 0x01, 0xFF
BYTE_PREFIX, WORD_PREFIX, DWORD_PREFIX, STRING_PREFIX, QWORD_PREFIX = 0x0A, 0x0B, 0x0C, 0x0D, 0x0E
NAME_OP, SCOPE_OP, BUFFER_OP, PACKAGE_OP = 0x08, 0x10, 0x11, 0x12
EXT_OP_PREFIX, DEVICE_OP = 0x5B, 0x82
ROOT_CHAR, DUAL_NAME_PREFIX, MULTI_NAME_PREFIX = 0x5C, 0x2E, 0x2F

# Resource descriptor fields (ACPI 6.4 "Resource Data Types").
RES_MEMORY, RES_IO, RES_BUS = 0, 1, 2
ADDR_MIN_FIXED, ADDR_MAX_FIXED = 0x04, 0x08       # general flags; bit 0 clear = producer
IO_ENTIRE_RANGE = 0x03                             # type-specific flags for I/O ranges
MEM_READ_WRITE = 0x01                              # type-specific: RW, non-cacheable


def pkg_length(body_len: int) -> bytes:
    """PkgLength for a body of ``body_len`` bytes; the encoding counts itself."""
    for n in range(1, 5):
        total = body_len + n
        if n == 1 and total < 0x40:
            return bytes([total])
        if n > 1 and total < 1 << (4 + 8 * (n - 1)):
            out = [((n - 1) << 6) | (total & 0x0F)]
            out += [(total >> (4 + 8 * i)) & 0xFF for i in range(n - 1)]
            return bytes(out)
    raise ValueError(f"AML package of {body_len} bytes is too large")


def name_seg(seg: str) -> bytes:
    """One 4-character NameSeg, padded with '_' as ASL does."""
    if not 1 <= len(seg) <= 4 or not (seg[0].isupper() or seg[0] == "_"):
        raise ValueError(f"invalid AML name segment {seg!r}")
    return seg.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """``\\_SB.PCI0``-style paths: root prefix, then one, two or many segments."""
    prefix = b""
    if path.startswith("\\"):
        prefix, path = bytes([ROOT_CHAR]), path[1:]
    segs = [name_seg(s) for s in path.split(".")] if path else []
    if len(segs) == 1:
        return prefix + segs[0]
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + b"".join(segs)
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + b"".join(segs)


def integer(value: int) -> bytes:
    """The shortest encoding of an integer constant (Zero/One/Ones or prefixed)."""
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"AML integer out of range: {value}")
    if value in (0, 1):
        return bytes([value])
    for prefix, fmt, limit in ((BYTE_PREFIX, "<B", 1 << 8), (WORD_PREFIX, "<H", 1 << 16),
                               (DWORD_PREFIX, "<I", 1 << 32), (QWORD_PREFIX, "<Q", 1 << 64)):
        if value < limit:
            return bytes([prefix]) + struct.pack(fmt, value)
    raise AssertionError("unreachable")


def string(text: str) -> bytes:
    return bytes([STRING_PREFIX]) + text.encode("ascii") + b"\0"


def eisa_id(pnp: str) -> bytes:
    """``EisaId("PNP0A03")``: three letters and four hex digits packed in a DWord."""
    if len(pnp) != 7:
        raise ValueError(f"invalid EISA id {pnp!r}")
    vendor = ((ord(pnp[0]) - 0x40) << 10) | ((ord(pnp[1]) - 0x40) << 5) | (ord(pnp[2]) - 0x40)
    value = struct.unpack("<I", struct.pack(">HH", vendor, int(pnp[3:], 16)))[0]
    return bytes([DWORD_PREFIX]) + struct.pack("<I", value)


def name(path: str, data: bytes) -> bytes:
    """``Name(path, data)``: ``data`` is an already encoded data object."""
    return bytes([NAME_OP]) + name_string(path) + data


def package(*elements: bytes) -> bytes:
    body = bytes([len(elements)]) + b"".join(elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path: str, *terms: bytes) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


# ---------------------------------------------------------------- resources
def io_port(base: int, length: int) -> bytes:
    """``IO(Decode16, base, base, 1, length)``: a fixed range the device consumes."""
    return struct.pack("<BBHHBB", 0x47, 0x01, base, base, 1, length)


def word_address(kind: int, minimum: int, maximum: int, type_flags: int = 0) -> bytes:
    """WordBusNumber / WordIO producer: a fixed window the bridge decodes."""
    body = struct.pack("<BBBHHHHH", kind, ADDR_MIN_FIXED | ADDR_MAX_FIXED, type_flags,
                       0, minimum, maximum, 0, maximum - minimum + 1)
    return struct.pack("<BH", 0x88, len(body)) + body


def dword_memory(minimum: int, maximum: int) -> bytes:
    """DWordMemory producer, read-write, non-cacheable (device memory)."""
    body = struct.pack("<BBBIIIII", RES_MEMORY, ADDR_MIN_FIXED | ADDR_MAX_FIXED, MEM_READ_WRITE,
                       0, minimum, maximum, 0, maximum - minimum + 1)
    return struct.pack("<BH", 0x87, len(body)) + body


def resource_template(*descriptors: bytes) -> bytes:
    """``ResourceTemplate() {...}``: the descriptors and an End Tag (checksum 0
    means "treat as valid", which is what iasl emits)."""
    return buffer(b"".join(descriptors) + bytes([0x79, 0x00]))
