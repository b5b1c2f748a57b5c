"""Register behaviour of the legacy PC devices, driven the way Linux's
drivers probe them (8250 autoconfig, i8042 self-test, CMOS reads)."""

from __future__ import annotations

import time

from kvmkit.devices import serial as s
from kvmkit.devices.i8042 import I8042
from kvmkit.devices.rtc import CmosRtc


class Line:
    """Records what the device does to its interrupt line."""

    def __init__(self) -> None:
        self.level = False
        self.pulses = 0

    def set_level(self, high: bool) -> None:
        self.level = high

    def pulse(self) -> None:
        self.pulses += 1


def uart():
    out = []
    line = Line()
    return s.Serial8250(line, out.append), line, out


def test_8250_autoconfig_probe_sees_a_16550a():
    u, _, _ = uart()
    u.write(s.SCR, 1, 0xA5)
    assert u.read(s.SCR, 1) == 0xA5                  # scratch register exists
    u.write(s.IER_DLM, 1, 0)
    assert u.read(s.IER_DLM, 1) == 0
    u.write(s.IER_DLM, 1, 0x0F)
    assert u.read(s.IER_DLM, 1) == 0x0F
    u.write(s.IER_DLM, 1, 0)
    u.write(s.MCR, 1, s.MCR_LOOP | 0x0A)             # loopback: OUT2|RTS -> DCD|CTS
    assert u.read(s.MSR, 1) & 0xF0 == 0x90
    u.write(s.MCR, 1, 0)
    u.write(s.IIR_FCR, 1, s.FCR_FIFO_ENABLE)
    assert u.read(s.IIR_FCR, 1) & 0xC0 == 0xC0       # FIFO present: 16550A


def test_8250_divisor_latch_and_transmit():
    u, _, out = uart()
    u.write(s.LCR, 1, s.LCR_DLAB | 3)
    u.write(s.RBR_THR_DLL, 1, 1)
    u.write(s.IER_DLM, 1, 0)
    assert (u.read(s.RBR_THR_DLL, 1), u.read(s.IER_DLM, 1)) == (1, 0)
    u.write(s.LCR, 1, 3)
    assert u.read(s.LSR, 1) & (s.LSR_THRE | s.LSR_TEMT) == s.LSR_THRE | s.LSR_TEMT
    for ch in b"ok\n":
        u.write(s.RBR_THR_DLL, 1, ch)
    assert b"".join(out) == b"ok\n"


def test_8250_thr_empty_interrupt_is_acknowledged_by_reading_iir():
    u, line, _ = uart()
    u.write(s.IER_DLM, 1, s.IER_THRI)
    assert line.level and u.read(s.IIR_FCR, 1) & 0x0F == s.IIR_THRI
    assert not line.level                            # reading IIR acknowledged it
    assert u.read(s.IIR_FCR, 1) & 0x0F == s.IIR_NO_INT
    u.write(s.RBR_THR_DLL, 1, ord("x"))              # the next character raises it again
    assert line.level


def test_8250_receive_raises_data_ready_and_overruns_when_full():
    u, line, _ = uart()
    u.write(s.IER_DLM, 1, s.IER_RDI)
    u.receive(b"hi")
    assert line.level and u.read(s.LSR, 1) & s.LSR_DR
    assert u.read(s.IIR_FCR, 1) & 0x0F == s.IIR_RDI
    assert bytes([u.read(0, 1), u.read(0, 1)]) == b"hi"
    assert not u.read(s.LSR, 1) & s.LSR_DR and not line.level
    u.receive(bytes(s.RX_FIFO_MAX + 1))
    assert u.read(s.LSR, 1) & s.LSR_OE
    assert not u.read(s.LSR, 1) & s.LSR_OE           # overrun is cleared by reading LSR


def test_8250_state_round_trip():
    u, _, _ = uart()
    u.write(s.LCR, 1, 0x1B)
    u.write(s.IER_DLM, 1, s.IER_RDI)
    u.receive(b"abc")
    v, line2, _ = uart()
    v.load_state(u.save_state())
    assert v.save_state() == u.save_state() and line2.level


def test_i8042_self_test_ctr_and_reset():
    resets = []
    kbd = I8042(Line(), lambda: resets.append(1))
    kbd.write(4, 1, 0xAA)
    assert kbd.read(4, 1) & 1 and kbd.read(0, 1) == 0x55       # controller self-test passed
    kbd.write(4, 1, 0x20)
    ctr = kbd.read(0, 1)
    kbd.write(4, 1, 0x60)
    kbd.write(0, 1, ctr & ~1)
    kbd.write(4, 1, 0x20)
    assert kbd.read(0, 1) == ctr & ~1
    assert not resets
    kbd.write(4, 1, 0xFE)                                      # pulse reset: Linux's reboot=k
    assert resets == [1]


def test_i8042_ctrl_alt_del_reaches_the_data_port_with_an_interrupt():
    line = Line()
    kbd = I8042(line, lambda: None)
    kbd.send_keys(b"\x1d\x38")
    assert line.pulses >= 1
    assert (kbd.read(0, 1), kbd.read(0, 1)) == (0x1D, 0x38)


def test_cmos_rtc_reports_current_utc_time_in_bcd():
    rtc = CmosRtc(256 << 20, clock=lambda: 1_795_300_000.0)   # 2026-11-21 19:46:40 UTC
    def reg(i):
        rtc.write(0, 1, i)
        return rtc.read(1, 1)
    t = time.gmtime(1_795_300_000)
    bcd = lambda v: (v // 10) << 4 | v % 10   # noqa: E731
    assert [reg(0), reg(2), reg(4), reg(7), reg(8), reg(9)] == \
        [bcd(t.tm_sec), bcd(t.tm_min), bcd(t.tm_hour), bcd(t.tm_mday), bcd(t.tm_mon), bcd(t.tm_year % 100)]
    assert not reg(0x0A) & 0x80                                # never mid-update
    assert reg(0x0D) & 0x80                                    # battery good
