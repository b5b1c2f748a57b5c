"""Function symbols of an ELF64 kernel (``vmlinux``), for naming guest RIPs.

The guest profiler samples instruction pointers from outside the guest; this
turns them into ``function+offset``.  Only the symbol table is read (no
DWARF), so it works on any unstripped vmlinux, the project's or a distro's.
A bzImage carries no symbols: profiles of one show raw addresses.
"""

from __future__ import annotations

import bisect
import os
import struct
from pathlib import Path

SHT_SYMTAB = 2
STT_FUNC, STT_NOTYPE = 2, 0


class SymbolTable:
    """Sorted (address, size, name) of the text symbols; ``lookup(rip)``."""

    def __init__(self, symbols: list[tuple[int, int, str]]) -> None:
        symbols = sorted(set(symbols))
        self._addrs = [s[0] for s in symbols]
        self._syms = symbols

    def __len__(self) -> int:
        return len(self._syms)

    def lookup(self, addr: int) -> str | None:
        """The symbol containing ``addr`` (``name``), or None."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return None
        start, size, name = self._syms[i]
        if size and addr >= start + size:
            # Past the symbol's end: in padding, or in an unsized asm label's tail.
            return None if addr - start > 0x10000 else name
        return name

    @classmethod
    def from_elf(cls, path: str | os.PathLike) -> "SymbolTable":
        """Read ``path``'s .symtab; an empty table if it has none (or is not ELF64)."""
        data = Path(path).read_bytes()
        if data[:4] != b"\x7fELF" or data[4] != 2:
            return cls([])
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
        sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
        out: list[tuple[int, int, str]] = []
        for sh in sections:
            if sh[1] != SHT_SYMTAB:
                continue
            strtab = sections[sh[6]]
            str_off, str_size = strtab[4], strtab[5]
            for off in range(sh[4], sh[4] + sh[5], 24):
                name_off, info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", data, off)
                if info & 0xF not in (STT_FUNC, STT_NOTYPE) or not value or not shndx or name_off >= str_size:
                    continue
                end = data.index(b"\0", str_off + name_off)
                name = data[str_off + name_off:end].decode("ascii", "replace")
                if name and not name.startswith(("$", ".L", "__key", "__func__")):
                    out.append((value, size, name))
        return cls(out)
