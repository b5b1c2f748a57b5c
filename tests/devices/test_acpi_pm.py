"""The PM1a register block: byte lanes, write-1-to-clear status, the SCI
level, soft-off, and state round trips."""

from __future__ import annotations

import pytest

from kvmkit.arch.x86 import acpi
from kvmkit.devices.acpi_pm import (PM1_CNT, PM1_EN, PM1_STS, PWRBTN_EN, PWRBTN_STS, SCI_EN, SLP_EN,
                                    WAK_STS, AcpiPm)


class Line:
    def __init__(self):
        self.levels: list[bool] = []

    @property
    def high(self) -> bool:
        return bool(self.levels) and self.levels[-1]

    def set_level(self, high: bool) -> None:
        self.levels.append(high)

    def pulse(self) -> None:
        raise AssertionError("the SCI is level-triggered")


@pytest.fixture
def pm():
    offs = []
    dev = AcpiPm(Line(), lambda: offs.append(1), soft_off_typ=acpi.SLP_TYP_S5)
    dev.poweroffs = offs
    return dev


def test_sci_en_always_set(pm):
    assert pm.read(PM1_CNT, 2) & SCI_EN
    pm.write(PM1_CNT, 2, 0)
    assert pm.read(PM1_CNT, 2) == SCI_EN


def test_power_button_raises_sci_only_when_enabled_and_clear_lowers_it(pm):
    pm.press_power_button()
    assert pm.read(PM1_STS, 2) & PWRBTN_STS and not pm.irq.high
    pm.write(PM1_EN, 2, PWRBTN_EN)
    assert pm.irq.high                                  # enabling a pending event raises it
    pm.write(PM1_STS, 2, 0)                             # writing 0 leaves status alone
    assert pm.irq.high
    pm.write(PM1_STS, 2, PWRBTN_STS)                    # write 1 to clear
    assert not pm.irq.high and pm.read(PM1_STS, 2) == 0
    pm.press_power_button()
    assert pm.irq.high
    pm.write(PM1_STS, 1, 0xFF)                          # the low byte holds no PWRBTN bit
    assert pm.irq.high
    pm.write(PM1_STS + 1, 1, PWRBTN_STS >> 8)           # byte access to the high lane
    assert not pm.irq.high


def test_dword_access_spans_status_and_enable(pm):
    pm.write(PM1_STS, 4, PWRBTN_EN << 16)
    pm.press_power_button()
    assert pm.read(PM1_STS, 4) == PWRBTN_STS | (PWRBTN_EN << 16)
    assert pm.read(PM1_CNT, 4) == SCI_EN | 0xFFFF0000   # past the block: open bus


def test_soft_off_calls_back_other_sleep_types_wake_at_once(pm):
    pm.write(PM1_CNT, 2, acpi.SLP_TYP_S5 << 10)          # SLP_TYP alone: nothing yet
    assert pm.poweroffs == []
    pm.write(PM1_CNT, 2, 1 << 10 | SLP_EN)              # S1 is not offered: wake at once
    assert pm.poweroffs == [] and pm.read(PM1_STS, 2) & WAK_STS
    pm.write(PM1_CNT, 2, acpi.SLP_TYP_S5 << 10 | SLP_EN)
    assert pm.poweroffs == [1]
    assert not pm.read(PM1_CNT, 2) & SLP_EN             # SLP_EN is write-only


def test_state_round_trip_reasserts_the_line(pm):
    pm.write(PM1_EN, 2, PWRBTN_EN)
    pm.press_power_button()
    state = pm.save_state()
    other = AcpiPm(Line(), lambda: None, soft_off_typ=acpi.SLP_TYP_S5)
    other.load_state(state)
    assert other.irq.high and other.save_state() == state
    with pytest.raises(ValueError):
        AcpiPm(Line(), lambda: None, soft_off_typ=8)
