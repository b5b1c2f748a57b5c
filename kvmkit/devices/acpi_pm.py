"""ACPI PM1a fixed hardware: the event block (PM1_STS, PM1_EN) and the
control block (PM1_CNT), so a guest can power off through ``\\_S5`` and the
host can press a power button the guest OS understands.

Registered as one 6-byte port range: offset 0 PM1_STS, 2 PM1_EN, 4 PM1_CNT
(the FADT built by :mod:`kvmkit.arch.x86.acpi` points at the same ports).
Any access size works; each byte lane goes to its register, which is what
a chipset does and what ACPICA's 16-bit accesses need.

- PM1_STS bits are write-1-to-clear.  PWRBTN_STS is set by
  :meth:`press_power_button`; while PWRBTN_STS and PWRBTN_EN are both set
  the SCI line is held high (level-triggered, shareable), and it drops when
  the guest clears the status bit.
- PM1_CNT.SCI_EN always reads 1: there is no legacy (SMM) mode to leave.
- Writing SLP_EN with SLP_TYP = the soft-off type calls ``on_poweroff``.
  Other sleep types are not offered in the DSDT; if a guest tries one
  anyway, WAK_STS is set at once, so its wait-for-wake loop ends.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from kvmkit.devices.irq import IrqLine

log = logging.getLogger("kvmkit.acpi_pm")

PM1_STS, PM1_EN, PM1_CNT = 0, 2, 4
REGS_LEN = 6

# PM1_STS / PM1_EN bits (ACPI 6.4 tables 4.16-4.17).
TMR_STS, GBL_STS, PWRBTN_STS, SLPBTN_STS, RTC_STS, WAK_STS = 1 << 0, 1 << 5, 1 << 8, 1 << 9, 1 << 10, 1 << 15
PWRBTN_EN = 1 << 8
EN_MASK = 0x0721                   # TMR_EN, GBL_EN, PWRBTN_EN, SLPBTN_EN, RTC_EN: plain storage
# PM1_CNT bits (table 4.18).
SCI_EN, BM_RLD, GBL_RLS = 1 << 0, 1 << 1, 1 << 2
SLP_TYP_SHIFT, SLP_TYP_MASK = 10, 0x7 << 10
SLP_EN = 1 << 13
CNT_STORED = BM_RLD | SLP_TYP_MASK  # GBL_RLS and SLP_EN are write-only actions


class AcpiPm:
    """PM1a event and control registers with a power button and soft-off."""

    def __init__(self, irq_line: IrqLine, on_poweroff: Callable[[], None], *, soft_off_typ: int) -> None:
        if not 0 <= soft_off_typ <= 7:
            raise ValueError(f"SLP_TYP is 3 bits, not {soft_off_typ}")
        self.irq = irq_line
        self.on_poweroff = on_poweroff
        self.soft_off_typ = soft_off_typ
        self.lock = threading.Lock()
        self.sts = 0
        self.en = 0
        self.cnt = SCI_EN

    def _regs(self) -> list[int]:
        return [self.sts, self.en, self.cnt]

    def read(self, offset: int, size: int) -> int:
        with self.lock:
            regs = self._regs()
        value = 0
        for i in range(size):
            o = offset + i
            if o < REGS_LEN:
                value |= ((regs[o // 2] >> (8 * (o % 2))) & 0xFF) << (8 * i)
            else:
                value |= 0xFF << (8 * i)
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        # Split into per-register (bits written, mask of bytes touched).
        writes = [[0, 0], [0, 0], [0, 0]]
        for i in range(size):
            o = offset + i
            if o >= REGS_LEN:
                break
            shift = 8 * (o % 2)
            writes[o // 2][0] |= ((value >> (8 * i)) & 0xFF) << shift
            writes[o // 2][1] |= 0xFF << shift
        poweroff = False
        with self.lock:
            (sts, sts_mask), (en, en_mask), (cnt, cnt_mask) = writes
            self.sts &= ~(sts & sts_mask)
            self.en = (self.en & ~en_mask) | (en & en_mask & EN_MASK)
            if cnt_mask:
                self.cnt = SCI_EN | (self.cnt & ~cnt_mask & CNT_STORED) | (cnt & cnt_mask & CNT_STORED)
                if cnt & cnt_mask & SLP_EN:
                    typ = (self.cnt & SLP_TYP_MASK) >> SLP_TYP_SHIFT
                    if typ == self.soft_off_typ:
                        poweroff = True
                    else:
                        log.info("guest asked for sleep type %d, which this machine lacks: waking at once", typ)
                        self.sts |= WAK_STS
            self._update_sci()
        if poweroff:
            self.on_poweroff()

    def press_power_button(self) -> None:
        """The fixed-feature power button: latch PWRBTN_STS; the SCI follows
        if the guest enabled the event (Linux's button driver does)."""
        with self.lock:
            self.sts |= PWRBTN_STS
            self._update_sci()

    @property
    def sci_asserted(self) -> bool:
        return bool(self.sts & self.en & PWRBTN_STS)

    def _update_sci(self) -> None:
        self.irq.set_level(self.sci_asserted)

    def save_state(self) -> dict:
        with self.lock:
            return {"sts": self.sts, "en": self.en, "cnt": self.cnt}

    def load_state(self, state: dict) -> None:
        with self.lock:
            self.sts, self.en = state["sts"], state["en"]
            self.cnt = SCI_EN | (state["cnt"] & CNT_STORED)
            self._update_sci()
