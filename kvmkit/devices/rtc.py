"""MC146818 RTC/CMOS at ports 0x70/0x71: the wall-clock time Linux reads at
boot, in BCD, 24-hour mode, never mid-update."""

from __future__ import annotations

import time

REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
REG_B_24H = 0x02
REG_D_VRT = 0x80


def _bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


class CmosRtc:
    def __init__(self, mem_size: int = 0, clock=time.time) -> None:
        self.index = 0
        self.clock = clock
        self.nvram = bytearray(128)
        self.nvram[REG_A] = 0x26
        self.nvram[REG_B] = REG_B_24H
        self.nvram[REG_D] = REG_D_VRT
        # Extended memory sizes some loaders read (KiB above 1 MiB; 64 KiB above 16 MiB).
        ext = min(max(mem_size - (1 << 20), 0) >> 10, 0xFFFF)
        self.nvram[0x17] = self.nvram[0x30] = ext & 0xFF
        self.nvram[0x18] = self.nvram[0x31] = ext >> 8
        above16 = min(max(mem_size - (16 << 20), 0) >> 16, 0xFFFF)
        self.nvram[0x34], self.nvram[0x35] = above16 & 0xFF, above16 >> 8

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return self.index
        idx = self.index & 0x7F
        t = time.gmtime(self.clock())
        values = {0: t.tm_sec, 2: t.tm_min, 4: t.tm_hour, 6: (t.tm_wday + 1) % 7 + 1,
                  7: t.tm_mday, 8: t.tm_mon, 9: t.tm_year % 100, 0x32: t.tm_year // 100}
        if idx in values:
            v = values[idx]
            return v if self.nvram[REG_B] & 0x04 else _bcd(v)
        if idx == REG_C:
            v, self.nvram[REG_C] = self.nvram[REG_C], 0
            return v
        return self.nvram[idx]

    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.index = value & 0xFF
            return
        idx = self.index & 0x7F
        if idx in (REG_C, REG_D):
            return
        if idx == REG_A:
            value &= 0x7F  # UIP is read-only
        self.nvram[idx] = value & 0xFF

    def save_state(self) -> dict:
        return {"index": self.index, "nvram": bytes(self.nvram)}

    def load_state(self, state: dict) -> None:
        self.index = state["index"]
        self.nvram = bytearray(state["nvram"])
