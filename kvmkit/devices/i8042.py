"""The PC keyboard controller, for two jobs: the reset line (Linux's
``reboot=k`` path writes 0xFE to port 0x64) and Ctrl-Alt-Del injection for a
graceful power-down request.  Registered at ports 0x60 (offset 0) and 0x64
(offset 4) as one 5-byte range.
"""

from __future__ import annotations

import collections
import threading
from typing import Callable

DATA, STATUS_CMD = 0, 4
STATUS_OBF, STATUS_IBF, STATUS_SYS, STATUS_CMD_BIT, STATUS_UNLOCKED = 0x01, 0x02, 0x04, 0x08, 0x10
CTR_KBDINT, CTR_SYS, CTR_KBDDIS, CTR_AUXDIS, CTR_XLATE = 0x01, 0x04, 0x10, 0x20, 0x40
CMD_READ_CTR, CMD_WRITE_CTR = 0x20, 0x60
CMD_SELFTEST, CMD_KBD_TEST, CMD_KBD_DISABLE, CMD_KBD_ENABLE = 0xAA, 0xAB, 0xAD, 0xAE
CMD_AUX_DISABLE, CMD_AUX_ENABLE, CMD_AUX_TEST = 0xA7, 0xA8, 0xA9
CMD_READ_OUTPUT, CMD_WRITE_OUTPUT, CMD_PULSE_RESET = 0xD0, 0xD1, 0xFE
KBD_IRQ = 1

# Set-1 scancodes (the controller translates; Linux's atkbd reads set 2 via
# translation, so we queue set-1 make/break codes).
CTRL_ALT_DEL = bytes([0x1D, 0x38, 0xE0, 0x53, 0xE0, 0xD3, 0xB8, 0x9D])


class I8042:
    def __init__(self, irq_line, on_reset: Callable[[], None]) -> None:
        self.irq = irq_line
        self.on_reset = on_reset
        self.lock = threading.Lock()
        self.ctr = CTR_SYS | CTR_XLATE | CTR_KBDINT
        self.out: collections.deque[int] = collections.deque()
        self.pending_cmd: int | None = None
        self.status_cmd = 0

    def read(self, offset: int, size: int) -> int:
        with self.lock:
            if offset == DATA:
                v = self.out.popleft() if self.out else 0
                self._update_irq()
                return v
            if offset == STATUS_CMD:
                return (STATUS_OBF if self.out else 0) | STATUS_SYS | STATUS_UNLOCKED | self.status_cmd
            return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        reset = False
        with self.lock:
            if offset == STATUS_CMD:
                self.status_cmd = STATUS_CMD_BIT
                reset = self._command(value)
            elif offset == DATA:
                self.status_cmd = 0
                cmd, self.pending_cmd = self.pending_cmd, None
                if cmd == CMD_WRITE_CTR:
                    self.ctr = value
                elif cmd == CMD_WRITE_OUTPUT:
                    reset = not value & 1  # bit 0 low = assert reset
                elif cmd is None:
                    # A command to the keyboard itself: acknowledge (0xFA);
                    # reset (0xFF) also reports self-test passed (0xAA).
                    self.out.append(0xFA)
                    if value == 0xFF:
                        self.out.append(0xAA)
            self._update_irq()
        if reset:
            self.on_reset()

    def _command(self, cmd: int) -> bool:
        if cmd == CMD_READ_CTR:
            self.out.append(self.ctr)
        elif cmd in (CMD_WRITE_CTR, CMD_WRITE_OUTPUT):
            self.pending_cmd = cmd
        elif cmd == CMD_SELFTEST:
            self.out.append(0x55)
        elif cmd in (CMD_KBD_TEST, CMD_AUX_TEST):
            self.out.append(0x00)
        elif cmd == CMD_KBD_DISABLE:
            self.ctr |= CTR_KBDDIS
        elif cmd == CMD_KBD_ENABLE:
            self.ctr &= ~CTR_KBDDIS
        elif cmd == CMD_AUX_DISABLE:
            self.ctr |= CTR_AUXDIS
        elif cmd == CMD_AUX_ENABLE:
            self.ctr &= ~CTR_AUXDIS
        elif cmd == CMD_READ_OUTPUT:
            self.out.append(0x01)
        elif cmd == CMD_PULSE_RESET or (0xF0 <= cmd <= 0xFF and not cmd & 1):
            return True
        return False

    def _update_irq(self) -> None:
        if self.out and self.ctr & CTR_KBDINT:
            self.irq.pulse()

    def send_keys(self, scancodes: bytes) -> None:
        with self.lock:
            self.out.extend(scancodes)
            self._update_irq()

    def save_state(self) -> dict:
        with self.lock:
            return {"ctr": self.ctr, "out": bytes(self.out), "pending_cmd": self.pending_cmd}

    def load_state(self, state: dict) -> None:
        with self.lock:
            self.ctr = state["ctr"]
            self.out = collections.deque(state["out"])
            self.pending_cmd = state["pending_cmd"]
