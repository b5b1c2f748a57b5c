"""Ports for test guests and firmware-style debugging.

- 0xE9 (Bochs/QEMU debugcon): bytes written appear on the debug output.
- 0xF4 (QEMU isa-debug-exit): writing ``v`` ends the VM with exit status
  ``(v << 1) | 1``, QEMU's convention, so one test guest runs on both.
"""

from __future__ import annotations

from typing import Callable

DEBUGCON_PORT = 0xE9
EXIT_PORT = 0xF4


class DebugCon:
    def __init__(self, output: Callable[[bytes], None]) -> None:
        self.output = output

    def read(self, offset: int, size: int) -> int:
        return 0xE9  # QEMU's readback value: lets guests detect the port

    def write(self, offset: int, size: int, value: int) -> None:
        self.output(bytes([value & 0xFF]))


class DebugExit:
    def __init__(self, on_exit: Callable[[int], None]) -> None:
        self.on_exit = on_exit

    def read(self, offset: int, size: int) -> int:
        return 0xFFFFFFFF

    def write(self, offset: int, size: int, value: int) -> None:
        self.on_exit((value << 1) | 1)
