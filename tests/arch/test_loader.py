"""Kernel recognition against real files: the tiny test guests (ELF), the
project's fast guest and Debian's stock kernel (bzImage and vmlinux) when
they have been built, and files that are not kernels."""

from __future__ import annotations

import pytest

from kvmkit.arch.x86.loader import parse_kernel
from kvmkit.errors import ConfigError


def _guest(name):
    try:
        from kvmkit.guest import assets
        return getattr(assets, f"{name}_guest")(build=False)
    except Exception as e:  # not built on this machine yet
        pytest.skip(f"{name} guest not built ({e}); run 'kvmkit guest build {name}'")


def test_elf_test_guest(tiny_guest):
    k = parse_kernel(tiny_guest("smp"))
    assert k.kind == "elf"
    assert k.entry == 0x100000
    assert {s.gpa for s in k.segments} >= {0x8000, 0x100000}


@pytest.mark.parametrize("name", ["fast", "stock"])
def test_real_kernels_parse_in_both_forms(name):
    g = _guest(name)
    bz = parse_kernel(g.bzimage)
    assert bz.kind == "bzimage" and bz.entry == 0x100200
    assert bz.cmdline_size >= 2047
    assert bz.setup_header[0x202 - 0x1F1:0x206 - 0x1F1] == b"HdrS"
    assert bz.version  # the kernel's own version string
    elf = parse_kernel(g.vmlinux)
    assert elf.kind == "elf"
    assert 0x100000 <= elf.entry < elf.end
    assert elf.version.startswith("Linux version")


def test_not_a_kernel(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(b"#!/bin/sh\necho hi\n" * 100)
    with pytest.raises(ConfigError, match="not a Linux kernel"):
        parse_kernel(p)


def test_missing_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        parse_kernel(tmp_path / "nope")
    with pytest.raises(ConfigError, match="directory"):
        parse_kernel(tmp_path)


def test_32bit_elf_is_rejected(tmp_path):
    p = tmp_path / "elf32"
    p.write_bytes(b"\x7fELF\x01\x01\x01" + bytes(100))
    with pytest.raises(ConfigError, match="64-bit"):
        parse_kernel(p)


def test_truncated_bzimage(tmp_path):
    import struct
    head = bytearray(0x400)
    struct.pack_into("<I", head, 0x202, 0x53726448)
    struct.pack_into("<H", head, 0x206, 0x020F)
    struct.pack_into("<H", head, 0x236, 1)
    head[0x1F1] = 4
    p = tmp_path / "bz"
    p.write_bytes(bytes(head))
    with pytest.raises(ConfigError, match="truncated"):
        parse_kernel(p)
