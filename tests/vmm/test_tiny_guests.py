"""The VMM against real /dev/kvm with tiny guests the tests build from
assembly: register setup, port I/O (single and string), multi-vCPU start,
ring 3, pause/resume, reset and the ways a VM ends."""

from __future__ import annotations

import time

import pytest

from kvmkit.vmm.api import ExitReason, RunState

pytestmark = pytest.mark.kvm


def test_hello_prints_and_exits_with_requested_status(tiny_guest, machine):
    m = machine(tiny_guest("hello"), cmdline="21")
    assert m.wait(20) == ExitReason.POWEROFF
    assert m.exit_status == (21 << 1) | 1
    assert bytes(m.debug_output) == b"hello from ring 0\n"   # rep outsb: string I/O
    assert m.state == RunState.SHUTDOWN


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_all_vcpus_start(tiny_guest, machine, cpus):
    m = machine(tiny_guest("smp"), cpus=cpus)
    assert m.wait(60) == ExitReason.POWEROFF, m.error
    assert m.exit_status == (cpus << 1) | 1   # the BSP counted every AP in
    assert len(m.query_cpus()) == cpus


def test_ring3_port_io(tiny_guest, machine):
    m = machine(tiny_guest("ring3"), cmdline="500")
    assert m.wait(60) == ExitReason.POWEROFF, m.error
    assert b"entering user mode" in bytes(m.debug_output)
    assert m.exit_status == 1, bytes(m.debug_output)  # 0x55 would mean an exception
    assert sum(t.exits for t in m.threads) >= 500


def _counter(m):
    return m.memory.read_u64(0x5000)


def _wait_counting(m, timeout=20):
    deadline = time.monotonic() + timeout
    while _counter(m) == 0:
        assert time.monotonic() < deadline, "counter guest never started counting"
        time.sleep(0.05)


def test_pause_stops_every_vcpu_and_resume_continues(tiny_guest, machine):
    m = machine(tiny_guest("counter"), cpus=2)
    _wait_counting(m)
    events = []
    m.subscribe(lambda ev: events.append(ev.name))
    m.pause()
    assert m.state == RunState.PAUSED
    a = _counter(m)
    time.sleep(0.3)
    assert _counter(m) == a, "the guest kept running while paused"
    m.resume()
    assert m.state == RunState.RUNNING
    deadline = time.monotonic() + 10
    while _counter(m) == a:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert events == ["STOP", "RESUME"]


def test_registers_readable_while_running(tiny_guest, machine):
    m = machine(tiny_guest("counter"))
    _wait_counting(m)
    regs = m.cpu_registers(0)
    assert 0x100000 <= regs["rip"] < 0x101000
    assert regs["cs"] == 0x10 and regs["efer"] & (1 << 10)  # long mode active
    assert m.state == RunState.RUNNING
    with pytest.raises(ValueError):
        m.cpu_registers(5)


def test_reset_reboots_the_guest(tiny_guest, machine):
    m = machine(tiny_guest("counter"))
    _wait_counting(m)
    m.reset()
    assert m.state == RunState.RUNNING
    deadline = time.monotonic() + 10
    while bytes(m.debug_output).count(b"counter running") < 2:
        assert time.monotonic() < deadline, bytes(m.debug_output)
        time.sleep(0.05)


def test_quit_ends_the_vm(tiny_guest, machine):
    m = machine(tiny_guest("counter"))
    _wait_counting(m)
    events = []
    m.subscribe(lambda ev: events.append((ev.name, ev.data)))
    m.quit()
    assert m.wait(5) == ExitReason.HOST_QUIT
    assert events == [("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})]


def test_start_paused(tiny_guest, machine):
    m = machine(tiny_guest("counter"), start_paused=True)
    time.sleep(0.3)
    assert m.state == RunState.PAUSED and _counter(m) == 0
    m.resume()
    _wait_counting(m)


def test_polled_serial_console_costs_one_exit_per_character(tiny_guest, machine):
    m = machine(tiny_guest("serial"))
    assert m.wait(20) == ExitReason.POWEROFF, m.error
    m.console.expect(rb"serial console ok\r\n", timeout=5)
    chars = len(b"serial console ok\r\n")
    exits = sum(t.exits for t in m.threads)
    if m.coalesced is not None:   # THR writes ride the coalesced ring: only LSR reads exit
        assert exits < chars + 5, exits
        assert m.coalesced.replayed >= chars
    else:
        assert exits >= 2 * chars


def test_emulator_gaps_behave_as_on_hardware(tiny_guest, machine):
    """int3, fwait, clac/stac at CPL0: completed by the VMM where KVM's
    emulator lacks them (host-compat), native elsewhere; the guest checks."""
    m = machine(tiny_guest("emugaps"))
    assert m.wait(20) == ExitReason.POWEROFF, m.error
    assert m.exit_status == (0x2A << 1) | 1, m.exit_status >> 1
    if m.compat.enabled:
        assert m.completer.counts.get("int3") == 1
        assert m.completer.counts.get("fwait") == 1
        assert m.completer.counts.get("lsl", 0) in (0, 2)   # 0 where the emulator has lsl
        assert m.completer.counts.get("ldmxcsr", 0) in (0, 2)
        assert m.completer.counts.get("stmxcsr", 0) in (0, 1)


def test_unknown_emulation_failure_names_bytes_and_rip(tiny_guest, machine):
    m = machine(tiny_guest("emugaps"), host_compat="off")
    m.wait(20)
    if not m.compat.enabled and m.exit_reason == ExitReason.ERROR:
        msg = str(m.error)
        assert "RIP 0x" in msg and "cc" in msg and "int3" in msg
    else:  # a host that runs int3 natively
        assert m.exit_status == (0x2A << 1) | 1


def test_xsave_and_xrstor_behave_as_on_hardware(tiny_guest, machine):
    """xsave/xrstor (standard form, XCR0 = x87|SSE) at CPL0, as a Linux
    context switch uses them: state out and back per area, XSTATE_BV, the
    init state, #GP for an unaligned area and #PF with CR2 for an unmapped
    one.  KVM's emulator lacks both: here the VMM completes them."""
    m = machine(tiny_guest("xsave"))
    assert m.wait(20) == ExitReason.POWEROFF, m.error
    assert m.exit_status == (0x2A << 1) | 1, m.exit_status >> 1
    if m.compat.enabled:
        assert m.completer.counts.get("xsave") == 4
        assert m.completer.counts.get("xrstor") == 3
