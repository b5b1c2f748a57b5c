"""Human sizes ("512M", "1G", "10GiB") as used on QEMU's and qemu-img's
command lines."""

from __future__ import annotations

import re

from kvmkit.errors import ConfigError

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]?)(I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str, default_unit: str = "", what: str = "size") -> int:
    """Parse ``text``; a bare number is in ``default_unit`` ("" = bytes, "M" = MiB)."""
    m = _SIZE_RE.match(str(text))
    if not m:
        raise ConfigError(f"invalid {what} {text!r}: expected a number with an optional "
                          "K, M, G or T suffix (e.g. 512M, 2G)")
    number, unit = m.group(1), m.group(2).upper()
    if not unit and not m.group(3):
        unit = default_unit
    value = float(number) * _UNITS[unit]
    if value != int(value):
        raise ConfigError(f"invalid {what} {text!r}: not a whole number of bytes")
    return int(value)


def format_size(n: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if n >= _UNITS[unit] and n % _UNITS[unit] == 0:
            return f"{n // _UNITS[unit]}{unit}"
    return str(n)
