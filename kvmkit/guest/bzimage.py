"""Recover the uncompressed ELF ``vmlinux`` from an x86 bzImage, on the host.

A bzImage decompresses itself at boot; on a host where guest kernel code is
emulated that costs minutes, so the VMM prefers to load the ELF directly.
The payload position comes from the boot-protocol header (``payload_offset``,
protocol >= 2.08); if that is unusable we fall back to scanning for the
compressor's magic, as the kernel's ``extract-vmlinux`` script does.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from pathlib import Path

from kvmkit.guest.errors import GuestBuildError

XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b\x08"
ELF_MAGIC = b"\x7fELF"


def _decompress_xz(data: bytes) -> bytes:
    # The kernel appends its 4-byte size after the stream: stop at stream end.
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


def _decompress_gzip(data: bytes) -> bytes:
    return zlib.decompressobj(zlib.MAX_WBITS | 16).decompress(data)


_DECODERS = ((XZ_MAGIC, _decompress_xz), (GZIP_MAGIC, _decompress_gzip))


def payload_offset(image: bytes) -> int | None:
    """Offset of the compressed kernel in a bzImage file, per its setup header."""
    if len(image) < 0x250 or image[0x202:0x206] != b"HdrS":
        return None
    (version,) = struct.unpack_from("<H", image, 0x206)
    if version < 0x208:
        return None
    setup_sects = image[0x1F1] or 4
    (offset,) = struct.unpack_from("<I", image, 0x248)
    return (setup_sects + 1) * 512 + offset


def _candidates(image: bytes) -> list[int]:
    starts = []
    header = payload_offset(image)
    if header is not None:
        starts.append(header)
    for magic, _ in _DECODERS:
        pos = image.find(magic)
        while pos != -1:
            starts.append(pos)
            pos = image.find(magic, pos + 1)
    return list(dict.fromkeys(starts))


def extract_vmlinux(image: bytes) -> bytes:
    """The ELF image inside a bzImage (xz or gzip payload).

    Raises GuestBuildError if no candidate payload decompresses to an ELF.
    """
    for start in _candidates(image):
        for magic, decode in _DECODERS:
            if image[start:start + len(magic)] != magic:
                continue
            try:
                elf = decode(image[start:])
            except (lzma.LZMAError, zlib.error, EOFError):
                continue
            if elf.startswith(ELF_MAGIC):
                return elf
    raise GuestBuildError("no xz or gzip payload holding an ELF kernel found in the bzImage")


def write_vmlinux(bzimage: Path, dest: Path) -> Path:
    """Write the ELF extracted from ``bzimage`` to ``dest``; return ``dest``."""
    elf = extract_vmlinux(bzimage.read_bytes())
    tmp = dest.with_name(dest.name + ".tmp")
    tmp.write_bytes(elf)
    tmp.replace(dest)
    return dest
