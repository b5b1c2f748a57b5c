"""ACPI against real /dev/kvm with a tiny guest (tests/guests/acpi.S) that
uses the tables the way an OS does: poweroff through \\_S5 and PM1a_CNT, and
the fixed-feature power button delivered as a level SCI on IOAPIC pin 9."""

from __future__ import annotations

import time

import pytest

from kvmkit.arch.x86 import acpi
from kvmkit.vmm.api import ExitReason

pytestmark = pytest.mark.kvm


def test_guest_powers_off_through_s5(tiny_guest, machine):
    m = machine(tiny_guest("acpi"), cmdline="0", start=False)
    events = []
    m.subscribe(lambda ev: events.append((ev.name, ev.data)))   # before start: the guest is quick
    m.start()
    assert m.wait(30) == ExitReason.POWEROFF, m.error
    assert m.exit_status == 0, m.exit_status                  # odd statuses: the guest's failure codes
    assert events == [("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"})]


class RecordingLine:
    def __init__(self, line):
        self.line, self.levels = line, []

    def set_level(self, high):
        self.levels.append(high)
        self.line.set_level(high)

    def pulse(self):
        self.line.pulse()


def test_powerdown_presses_the_acpi_power_button(tiny_guest, machine):
    m = machine(tiny_guest("acpi"), start=False, cmdline="1")
    m.acpi_pm.irq = line = RecordingLine(m.acpi_pm.irq)
    assert line.line.gsi == acpi.SCI_IRQ
    m.start()
    deadline = time.monotonic() + 30
    while b"button armed" not in bytes(m.debug_output):
        assert time.monotonic() < deadline and m.running, (bytes(m.debug_output), m.error)
        time.sleep(0.02)
    events = []
    m.subscribe(lambda ev: events.append(ev.name))
    m.powerdown()
    assert m.wait(30) == ExitReason.POWEROFF, m.error
    assert m.exit_status == (0x42 << 1) | 1, m.exit_status    # its SCI handler saw PWRBTN_STS
    assert [lvl for lvl in line.levels if lvl] and line.levels[-1] is False   # raised, then lowered by the clear
    assert m.acpi_pm.save_state()["sts"] == 0
    assert events[0] == "POWERDOWN"
    assert m.i8042.save_state()["out"] == b""                 # no Ctrl-Alt-Del with ACPI on


def test_no_acpi_means_no_tables_and_ctrl_alt_del(tiny_guest, machine):
    m = machine(tiny_guest("counter"), acpi=False)
    assert m.acpi_pm is None
    assert m.memory.read(acpi.RSDP_ADDR, 8) != b"RSD PTR "
    assert m.pio_bus.find(acpi.PM1_EVT_PORT) is None
    m.powerdown()
    assert m.i8042.save_state()["out"].startswith(b"\x1d\x38")


def test_acpi_tables_in_guest_memory_and_reset_restores_pm(tiny_guest, machine):
    m = machine(tiny_guest("counter"))
    assert m.memory.read(acpi.RSDP_ADDR, 8) == b"RSD PTR "
    assert acpi.SCI_IRQ not in m.device_context.isa_irqs_free
    m.acpi_pm.press_power_button()
    m.reset()
    assert m.acpi_pm.save_state()["sts"] == 0
    assert m.memory.read(acpi.RSDP_ADDR, 8) == b"RSD PTR "
