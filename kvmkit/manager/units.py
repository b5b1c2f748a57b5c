"""libvirt's scaled integers: ``<memory unit='MiB'>`` and virsh's ``10G``.

libvirt reads both decimal (``KB``, ``MB``) and binary (``k``, ``KiB``,
``M``, ``MiB``) units, case-insensitively, and a bare number in the caller's
default unit; it writes memory back in KiB.  Kept apart from
:mod:`kvmkit.sizes` because the spellings (and "KB means 1000") differ.
"""

from __future__ import annotations

import re

_BINARY = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}
_NUMBER = re.compile(r"^\s*(\d+)\s*([a-zA-Z]*)\s*$")


def unit_scale(unit: str) -> int | None:
    """Bytes per ``unit``, or None if libvirt would not accept it."""
    u = unit.lower()
    if u in ("b", "bytes"):
        return 1
    if len(u) == 1 and u in _BINARY:
        return 1024 ** _BINARY[u]
    if len(u) == 3 and u.endswith("ib") and u[0] in _BINARY:
        return 1024 ** _BINARY[u[0]]
    if len(u) == 2 and u.endswith("b") and u[0] in _BINARY:
        return 1000 ** _BINARY[u[0]]
    return None


def scaled(text: str, default_unit: str) -> int | None:
    """``"10G"``/``"512"``/``"2 MiB"`` → bytes (``default_unit`` for a bare
    number); None when the text is not such a number."""
    m = _NUMBER.match(text)
    if not m:
        return None
    scale = unit_scale(m.group(2) or default_unit)
    return None if scale is None else int(m.group(1)) * scale


def human(nbytes: int) -> str:
    """virsh's ``10.00 GiB`` for capacities (vol-info, pool-info)."""
    value, unit = float(nbytes), "B"
    for name in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024:
            break
        value, unit = value / 1024, name
    return f"{value:.2f} {unit}"
