"""vmlinux extraction, against Debian's real kernel package and synthetic images."""

from __future__ import annotations

import gzip
import lzma
import struct
import subprocess
from pathlib import Path

import pytest

from kvmkit.guest import bzimage
from kvmkit.guest.errors import GuestBuildError

FAKE_ELF = b"\x7fELF\x02\x01\x01" + bytes(9) + b"kernel body " * 1000


def _fake_bzimage(payload: bytes, setup_sects: int = 4) -> bytes:
    """A minimal image with a 2.15 boot header whose payload_offset points at ``payload``."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, 0x20F)
    struct.pack_into("<II", setup, 0x248, 0x100, len(payload))
    return bytes(setup) + bytes(0x100) + payload + struct.pack("<I", len(FAKE_ELF))


def test_xz_payload_found_through_the_header() -> None:
    image = _fake_bzimage(lzma.compress(FAKE_ELF, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32))
    assert bzimage.payload_offset(image) == 5 * 512 + 0x100
    assert bzimage.extract_vmlinux(image) == FAKE_ELF


def test_gzip_payload_found_by_scanning_without_header() -> None:
    image = b"\0" * 777 + gzip.compress(FAKE_ELF) + b"\1\2\3\4"
    assert bzimage.payload_offset(image) is None
    assert bzimage.extract_vmlinux(image) == FAKE_ELF


def test_payload_that_is_not_an_elf_is_rejected() -> None:
    image = _fake_bzimage(lzma.compress(b"not a kernel", format=lzma.FORMAT_XZ))
    with pytest.raises(GuestBuildError, match="ELF"):
        bzimage.extract_vmlinux(image)


def test_real_debian_kernel_yields_an_x86_64_executable(stock_kernel_deb: Path, tmp_path: Path) -> None:
    # Only boot/ is needed: skip unpacking the package's ~400 MB of modules.
    tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(stock_kernel_deb)], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "--wildcards", "./boot/vmlinuz-*"], input=tar.stdout, cwd=tmp_path, check=True)
    (vmlinuz,) = (tmp_path / "boot").glob("vmlinuz-*")
    image = vmlinuz.read_bytes()
    offset = bzimage.payload_offset(image)
    assert offset is not None and image[offset:offset + 6] == bzimage.XZ_MAGIC
    out = bzimage.write_vmlinux(vmlinuz, tmp_path / "vmlinux")
    elf = out.read_bytes()
    assert elf[:4] == b"\x7fELF" and elf[4] == 2  # 64-bit
    e_type, e_machine = struct.unpack_from("<HH", elf, 16)
    assert (e_type, e_machine) == (2, 0x3E)  # ET_EXEC, x86-64
    assert len(elf) > 4 * len(image)
