"""The Linux x86 zero page (``struct boot_params``) and its setup header.

Offsets from Documentation/arch/x86/boot.rst and zero-page.rst.  We build the
page in a bytearray and write it to guest memory once.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

E820_RAM = 1
E820_RESERVED = 2
E820_MAX_ENTRIES = 128

# struct boot_params offsets
EXT_RAMDISK_IMAGE = 0x0C0
EXT_RAMDISK_SIZE = 0x0C4
EXT_CMD_LINE_PTR = 0x0C8
E820_ENTRIES = 0x1E8
SETUP_HEADER = 0x1F1
E820_TABLE = 0x2D0

# setup header fields (absolute offsets in the zero page / bzImage)
SETUP_SECTS = 0x1F1
BOOT_FLAG = 0x1FE
JUMP = 0x200
HEADER = 0x202
VERSION = 0x206
TYPE_OF_LOADER = 0x210
LOADFLAGS = 0x211
CODE32_START = 0x214
RAMDISK_IMAGE = 0x218
RAMDISK_SIZE = 0x21C
HEAP_END_PTR = 0x224
CMD_LINE_PTR = 0x228
INITRD_ADDR_MAX = 0x22C
KERNEL_ALIGNMENT = 0x230
RELOCATABLE_KERNEL = 0x234
XLOADFLAGS = 0x236
CMDLINE_SIZE = 0x238
PAYLOAD_OFFSET = 0x248
PAYLOAD_LENGTH = 0x24C
PREF_ADDRESS = 0x258
INIT_SIZE = 0x260

HDRS_MAGIC = 0x53726448  # "HdrS"
LOADED_HIGH = 0x01
KEEP_SEGMENTS = 0x40
CAN_USE_HEAP = 0x80
XLF_KERNEL_64 = 0x1
XLF_CAN_BE_LOADED_ABOVE_4G = 0x2


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: int


class ZeroPage:
    """A 4 KiB ``boot_params`` under construction."""

    SIZE = 0x1000

    def __init__(self, setup_header: bytes | None = None) -> None:
        self.buf = bytearray(self.SIZE)
        if setup_header:
            self.buf[SETUP_HEADER:SETUP_HEADER + len(setup_header)] = setup_header
        else:
            # A vmlinux has no setup header: state the minimum a 64-bit entry reads.
            self.u16(BOOT_FLAG, 0xAA55)
            self.u32(HEADER, HDRS_MAGIC)
            self.u16(VERSION, 0x020F)
            self.u32(KERNEL_ALIGNMENT, 0x0100_0000)
        self.u8(TYPE_OF_LOADER, 0xFF)
        self.u8(LOADFLAGS, self.get_u8(LOADFLAGS) | LOADED_HIGH | CAN_USE_HEAP)
        self.u16(HEAP_END_PTR, 0xFE00)

    def u8(self, off: int, v: int) -> None:
        self.buf[off] = v & 0xFF

    def u16(self, off: int, v: int) -> None:
        struct.pack_into("<H", self.buf, off, v)

    def u32(self, off: int, v: int) -> None:
        struct.pack_into("<I", self.buf, off, v & 0xFFFFFFFF)

    def get_u8(self, off: int) -> int:
        return self.buf[off]

    def get_u32(self, off: int) -> int:
        return struct.unpack_from("<I", self.buf, off)[0]

    def set_cmdline(self, addr: int, length: int) -> None:
        self.u32(CMD_LINE_PTR, addr)
        self.u32(EXT_CMD_LINE_PTR, addr >> 32)
        self.u32(CMDLINE_SIZE, length)

    def set_initrd(self, addr: int, size: int) -> None:
        self.u32(RAMDISK_IMAGE, addr)
        self.u32(EXT_RAMDISK_IMAGE, addr >> 32)
        self.u32(RAMDISK_SIZE, size)
        self.u32(EXT_RAMDISK_SIZE, size >> 32)

    def set_e820(self, entries: list[E820Entry]) -> None:
        if len(entries) > E820_MAX_ENTRIES:
            raise ValueError("too many e820 entries")
        self.u8(E820_ENTRIES, len(entries))
        for i, e in enumerate(entries):
            struct.pack_into("<QQI", self.buf, E820_TABLE + 20 * i, e.addr, e.size, e.type)

    def bytes(self) -> bytes:
        return bytes(self.buf)
