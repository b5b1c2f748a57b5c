"""Recognise and lay out a Linux kernel: a bzImage (64-bit boot protocol) or an
ELF ``vmlinux`` (also any static ELF64 test guest linked at physical
addresses).

Parsing is separate from loading so the CLI can reject a bad file before any
VM exists, and so tests can check layouts against the real Debian kernel.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

from kvmkit.arch.x86 import bootparams as bp
from kvmkit.arch.x86.layout import HIMEM_START
from kvmkit.errors import ConfigError

ELF_MAGIC = b"\x7fELF"
EM_X86_64 = 62
PT_LOAD = 1
ET_EXEC = 2


@dataclass(frozen=True)
class Segment:
    gpa: int
    file_offset: int
    file_size: int
    mem_size: int


@dataclass(frozen=True)
class KernelImage:
    """Where each part of a kernel file goes, and how to enter it."""

    path: Path
    kind: str                          # "bzimage" or "elf"
    entry: int                         # 64-bit entry point (guest-physical)
    segments: tuple[Segment, ...]
    setup_header: bytes = b""          # bzImage only: copied into the zero page
    initrd_addr_max: int = 0x7FFF_FFFF
    cmdline_size: int = 2048
    version: str = ""                  # the kernel's version string, if found
    end: int = field(default=0)        # first byte after everything the kernel occupies at boot

    def load(self, memory) -> None:
        """Copy the segments into guest memory (zeroing any .bss tail)."""
        with open(self.path, "rb") as f:
            for seg in self.segments:
                view = memory.view(seg.gpa, seg.mem_size)
                f.seek(seg.file_offset)
                got = f.readinto(view[: seg.file_size])
                if got != seg.file_size:
                    raise ConfigError(f"{self.path}: truncated kernel image")
                if seg.mem_size > seg.file_size:
                    view[seg.file_size:] = bytes(seg.mem_size - seg.file_size)


def _read_head(path: Path, n: int) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except FileNotFoundError:
        raise ConfigError(f"kernel {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"kernel {path}: is a directory, not a kernel image") from None
    except PermissionError:
        raise ConfigError(f"kernel {path}: permission denied") from None
    except OSError as e:
        raise ConfigError(f"kernel {path}: {os.strerror(e.errno)}") from None


def parse_kernel(path: str | os.PathLike) -> KernelImage:
    """Identify ``path`` as a bzImage or ELF64 kernel, or raise ConfigError."""
    p = Path(path)
    head = _read_head(p, 0x4000)
    if head[:4] == ELF_MAGIC:
        return _parse_elf(p)
    if len(head) >= 0x260 and struct.unpack_from("<I", head, bp.HEADER)[0] == bp.HDRS_MAGIC:
        return _parse_bzimage(p, head)
    raise ConfigError(f"kernel {p}: not a Linux kernel (neither a bzImage nor an ELF vmlinux)")


def _parse_bzimage(p: Path, head: bytes) -> KernelImage:
    version = struct.unpack_from("<H", head, bp.VERSION)[0]
    if version < 0x020C:
        raise ConfigError(f"kernel {p}: boot protocol {version >> 8}.{version & 0xFF} is too old "
                          "(64-bit entry needs 2.12 or later)")
    xloadflags = struct.unpack_from("<H", head, bp.XLOADFLAGS)[0]
    if not xloadflags & bp.XLF_KERNEL_64:
        raise ConfigError(f"kernel {p}: bzImage has no 64-bit entry point (a 32-bit kernel?)")
    setup_sects = head[bp.SETUP_SECTS] or 4
    pm_offset = (setup_sects + 1) * 512
    size = p.stat().st_size
    if size <= pm_offset:
        raise ConfigError(f"kernel {p}: truncated bzImage")
    pm_size = size - pm_offset
    init_size = struct.unpack_from("<I", head, bp.INIT_SIZE)[0]
    hdr_end = 0x202 + head[0x201]  # the jump at 0x200 skips the header: its end
    setup_header = head[bp.SETUP_HEADER:hdr_end]
    kver = _bzimage_version(p, head)
    return KernelImage(
        path=p, kind="bzimage", entry=HIMEM_START + 0x200,
        segments=(Segment(HIMEM_START, pm_offset, pm_size, pm_size),),
        setup_header=setup_header,
        initrd_addr_max=struct.unpack_from("<I", head, bp.INITRD_ADDR_MAX)[0] or 0x37FFFFFF,
        cmdline_size=struct.unpack_from("<I", head, bp.CMDLINE_SIZE)[0] or 255,
        version=kver,
        end=HIMEM_START + max(pm_size, init_size),
    )


def _bzimage_version(p: Path, head: bytes) -> str:
    off = struct.unpack_from("<H", head, 0x20E)[0]
    if not off:
        return ""
    with open(p, "rb") as f:
        f.seek(off + 0x200)
        raw = f.read(256).split(b"\0", 1)[0]
    return raw.decode("ascii", "replace") if raw.isascii() else ""


def _parse_elf(p: Path) -> KernelImage:
    with open(p, "rb") as f:
        ehdr = f.read(64)
        if len(ehdr) < 64 or ehdr[4] != 2:
            raise ConfigError(f"kernel {p}: not a 64-bit ELF file")
        if ehdr[5] != 1:
            raise ConfigError(f"kernel {p}: not a little-endian ELF file")
        (e_type, e_machine, _ver, e_entry, e_phoff, _shoff, _flags, _ehsize,
         e_phentsize, e_phnum) = struct.unpack_from("<HHIQQQIHHH", ehdr, 16)
        if e_type != ET_EXEC:
            kind = {3: "a position-independent program or shared library",
                    1: "a relocatable object file"}.get(e_type, f"ELF type {e_type}")
            raise ConfigError(f"kernel {p}: {kind}, not a kernel (expected an ELF executable "
                              "linked at physical addresses, like vmlinux)")
        if e_machine != EM_X86_64:
            raise ConfigError(f"kernel {p}: ELF machine {e_machine} is not x86-64")
        if e_phnum == 0 or e_phentsize < 56 or e_phnum > 256:
            raise ConfigError(f"kernel {p}: ELF file has no usable program headers")
        size = os.fstat(f.fileno()).st_size
        if e_phoff + e_phentsize * e_phnum > size:    # also what seek() and read() would choke on
            raise ConfigError(f"kernel {p}: ELF program headers lie outside the file")
        f.seek(e_phoff)
        phdrs = f.read(e_phentsize * e_phnum)
    segments = []
    for i in range(e_phnum):
        (p_type, _pflags, p_offset, _vaddr, p_paddr, p_filesz, p_memsz,
         _align) = struct.unpack_from("<IIQQQQQQ", phdrs, i * e_phentsize)
        if p_type != PT_LOAD or p_memsz == 0:
            continue
        if p_offset + p_filesz > size or p_filesz > p_memsz:
            raise ConfigError(f"kernel {p}: ELF segment {i} lies outside the file")
        segments.append(Segment(p_paddr, p_offset, p_filesz, p_memsz))
    if not segments:
        raise ConfigError(f"kernel {p}: ELF file has no loadable segments")
    end = max(s.gpa + s.mem_size for s in segments)
    entry = e_entry
    # vmlinux links its entry at a virtual address in some builds: map it to
    # the segment that holds it.
    if entry >= 0xFFFF_FFFF_8000_0000:
        entry &= 0x7FFF_FFFF
    if not any(s.gpa <= entry < s.gpa + s.mem_size for s in segments):
        raise ConfigError(f"kernel {p}: entry point {entry:#x} is outside its loadable segments")
    return KernelImage(path=p, kind="elf", entry=entry, segments=tuple(segments),
                       end=end, version=_elf_version(p))


def _elf_version(p: Path) -> str:
    """Find "Linux version ..." in the first few MiB of a vmlinux (cheap, optional)."""
    try:
        with open(p, "rb") as f:
            data = f.read(32 << 20)
    except OSError:
        return ""
    i = data.find(b"Linux version ")
    if i < 0:
        return ""
    return data[i:i + 200].split(b"\n", 1)[0].split(b"\0", 1)[0].decode("ascii", "replace")
