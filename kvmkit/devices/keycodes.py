"""QEMU's key names (QAPI ``QKeyCode``) as PC set-1 scancodes, for QMP
``send-key``: how a manager presses Ctrl-Alt-Del (``virsh reboot`` on a
guest whose init reboots on it) or types into a guest without a serial line.

Only the keys a control plane plausibly sends are here; an unknown name is
refused by the command with QEMU's wording.
"""

from __future__ import annotations

EXTENDED = 0x100            # the code is sent after an 0xE0 prefix
RELEASE = 0x80              # set 1: the break code is the make code with bit 7 set

_LETTERS = dict(zip("qwertyuiop", range(0x10, 0x1A))) | dict(zip("asdfghjkl", range(0x1E, 0x27))) \
    | dict(zip("zxcvbnm", range(0x2C, 0x33)))
_DIGITS = {str((i + 1) % 10): 0x02 + i for i in range(10)}

QCODES: dict[str, int] = {
    **_LETTERS, **_DIGITS,
    "esc": 0x01, "minus": 0x0C, "equal": 0x0D, "backspace": 0x0E, "tab": 0x0F, "ret": 0x1C,
    "ctrl": 0x1D, "shift": 0x2A, "shift_r": 0x36, "alt": 0x38, "spc": 0x39, "caps_lock": 0x3A,
    **{f"f{i}": 0x3A + i for i in range(1, 11)}, "f11": 0x57, "f12": 0x58,
    "ctrl_r": EXTENDED | 0x1D, "alt_r": EXTENDED | 0x38, "delete": EXTENDED | 0x53,
    "insert": EXTENDED | 0x52, "home": EXTENDED | 0x47, "end": EXTENDED | 0x4F,
    "pgup": EXTENDED | 0x49, "pgdn": EXTENDED | 0x51, "up": EXTENDED | 0x48,
    "down": EXTENDED | 0x50, "left": EXTENDED | 0x4B, "right": EXTENDED | 0x4D,
}


def _code(code: int, release: bool) -> bytes:
    byte = (code & 0x7F) | (RELEASE if release else 0)
    return bytes([0xE0, byte]) if code & EXTENDED else bytes([byte])


def chord(codes: list[int]) -> bytes:
    """Press every key in order, then release them in reverse (QEMU's send-key)."""
    return b"".join(_code(c, False) for c in codes) + b"".join(_code(c, True) for c in reversed(codes))
