"""Human sizes ("10G", "512M", "+1G") in the spelling qemu-img accepts.

Suffixes are binary (K = 1024) as in qemu-img; a bare number is bytes.
"""

from __future__ import annotations

import re

from kvmkit.errors import ImageError

_SUFFIX = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
           "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTPEB]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Parse ``10G``/``512M``/``4096`` into bytes; fractions allowed (``1.5G``)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ImageError(f"invalid size {text!r}: use a number with an optional "
                         "K, M, G, T, P or E suffix")
    number, suffix = match.groups()
    value = float(number) * _SUFFIX[suffix.upper()] if "." in number \
        else int(number) * _SUFFIX[suffix.upper()]
    return int(value)


def format_size(n: int) -> str:
    """Format like qemu-img's ``64 MiB`` / ``1.5 GiB`` / ``512 B``."""
    for unit, scale in (("EiB", 1 << 60), ("PiB", 1 << 50), ("TiB", 1 << 40),
                        ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            value = n / scale
            text = f"{value:.3g}" if value < 1000 else f"{value:.0f}"
            return f"{text} {unit}"
    return f"{n} B"
