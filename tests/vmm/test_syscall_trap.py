"""The syscall trap (host-compat on emulating hosts): a tiny guest with
Linux's syscall setup runs a ring-3 program that makes real syscalls, takes
real page faults from ring 3 and ring 0, jumps to LSTAR without `syscall`
(with R11 asking for IOPL 3, NT, VIF and VIP), and rewrites its own #PF
handler.  On a VT-x/SVM host the same guest runs natively and must print the
same; here the VMM completes every syscall and passes every fault through."""

from __future__ import annotations

import re

import pytest

from kvmkit.vmm.api import ExitReason
from kvmkit.vmm.hostcompat.syscall_trap import RFLAGS_USER

pytestmark = pytest.mark.kvm

LOOPS = 5000
RFLAGS_IOPL, RFLAGS_NT, RFLAGS_VIF, RFLAGS_VIP, RFLAGS_IF = 3 << 12, 1 << 14, 1 << 19, 1 << 20, 1 << 9


def _faults(out: str) -> list[tuple[int, int]]:
    """(error code, CR2) of every page fault the guest kernel's handler saw."""
    return [(int(e, 16), int(c, 16)) for e, c in re.findall(r"^pf ([0-9a-f]{16})\n([0-9a-f]{16})$", out, re.M)]


def _run(m) -> str:
    assert m.wait(120) == ExitReason.POWEROFF, m.error
    out = m.debug_output.decode()
    assert m.exit_status == 1, out[-2000:]
    return out


def _lstar(m) -> int:
    from kvmkit.arch.x86.elf_symbols import SymbolTable
    syms = SymbolTable.from_elf(m.kernel.path)
    return next(a for a, _, n in syms._syms if n == "syscall_entry")


def _check_program(m, out: str) -> None:
    for line in ("user: start", "user: syscalls returned", "user: read fault handled",
                 "user: fetch fault handled", "user: lstar read fault handled", "user: lstar jump done",
                 "user: kernel fault handled", "kernel: rewrote the #PF handler", "user: handler rewritten",
                 "user: end"):
        assert line in out, out[-3000:]
    assert "user: no fault!" not in out and "unexpected exception" not in out
    hexes = re.findall(r"^([0-9a-f]{16})$", out, re.M)
    # The kernel counts every syscall it served: 2 before the loop, then LOOPS.
    assert int(hexes[0], 16) == LOOPS + 2
    lstar = _lstar(m)
    assert _faults(out) == [(0x5, 0x200000),            # user read of a supervisor page
                            (0x15, 0x200010),           # user fetch from a supervisor page
                            (0x5, lstar),               # user read of LSTAR's bytes: a fault, not a syscall
                            (0x0, 0x1_0000_0000),       # kernel-mode read of an unmapped page
                            (0x5, 0x200000)]            # after the rewrite
    # The jump to LSTAR with R11 = IOPL 3 | NT | VIF | VIP: what came back
    # is what a real syscall gives a ring-3 program, and `in` still faults.
    flags = next(int(h, 16) for h in hexes if int(h, 16) & 0xFFFFF000 == 0 and int(h, 16) & 0x2)
    assert flags & RFLAGS_IOPL == 0 and not flags & (RFLAGS_NT | RFLAGS_VIF | RFLAGS_VIP)
    assert flags & RFLAGS_IF
    assert "gp\n" in out and "port I/O allowed" not in out


def test_syscalls_faults_and_a_fake_landing(tiny_guest, machine):
    m = machine(tiny_guest("syscall"), cmdline=str(LOOPS))
    out = _run(m)
    _check_program(m, out)
    trap = m.syscall_trap
    if trap is None:
        pytest.skip("this host runs syscall natively (no trap): the program's checks passed")
    s = trap.stats
    assert s.syscalls == LOOPS + 2 + 9 + 1 + 100 + 4    # loop, SAYs/SYSes, the fake landing, the tail
    assert s.page_faults == 5 and s.fallbacks == 0
    assert s.r11_sanitised == 1
    assert s.replants == 1 and s.plants == 2             # the kernel rewrote the handler once
    assert s.completions == {"nop": 4, "cld": 1}
    stats = m.query_stats()["host-compat"]["syscall-trap"]
    assert stats["syscalls"] == s.syscalls


def test_uncompletable_first_instruction_is_single_stepped(tiny_guest, machine):
    """A handler starting with `push rax`: the VMM restores the byte,
    single-steps it with the other vCPUs held, and plants again."""
    m = machine(tiny_guest("syscall_step"), cmdline="200")
    out = _run(m)
    trap = m.syscall_trap
    if trap is None:
        pytest.skip("no syscall trap on this host")
    assert "user: end" in out and "user: no fault!" not in out
    assert trap.stats.fallbacks == 4 and trap.stats.completions == {"push": 4, "cld": 1}
    assert m.memory.read_u8(trap.plant.phys) == 0xCC   # planted again after each step


def test_trap_is_planted_again_after_a_reset(tiny_guest, machine):
    """The program's end resets the machine in place: RAM is cleared and the
    kernel reloaded, so the trap must forget its plant and plant anew."""
    m = machine(tiny_guest("syscall_reset"), cmdline="100", reboot_action="reset")
    resets = []
    m.subscribe(lambda ev: resets.append(ev) if ev.name == "RESET" else None)
    import time
    deadline = time.monotonic() + 60
    while len(resets) < 2 and time.monotonic() < deadline and m.running:
        time.sleep(0.05)
    m.pause()
    out = m.debug_output.decode()
    assert len(resets) >= 2, (m.error, out[-2000:])
    assert out.count("user: end") >= 2
    if m.syscall_trap is not None:
        assert m.syscall_trap.stats.plants >= 4          # two per run (first plant, after the rewrite)
        assert m.syscall_trap.stats.syscalls >= 2 * (100 + 2)


def test_off_on_this_host_means_no_trap(tiny_guest, machine):
    m = machine(tiny_guest("hello"), host_compat="off")
    assert m.syscall_trap is None and "syscall" not in m.compat.describe()


def test_r11_mask_is_what_ring3_can_set():
    for bit in (12, 13, 14, 16, 17, 19, 20):       # IOPL, NT, RF, VM, VIF, VIP
        assert not RFLAGS_USER & (1 << bit)
    for bit in (0, 2, 4, 6, 7, 8, 10, 11, 18, 21):  # CF PF AF ZF SF TF DF OF AC ID
        assert RFLAGS_USER & (1 << bit)


def test_counts_reach_qmp_clients(tiny_guest, machine, tmp_path):
    """query-kvmkit-stats over a real QMP client shows the trap's counts."""
    import asyncio

    from qemu.qmp import QMPClient

    from kvmkit.monitor.server import QmpServer
    m = machine(tiny_guest("syscall"), cmdline="300")
    _run(m)
    path = f"/tmp/kvmkit-test-{id(m)}.qmp"
    with QmpServer(m, f"unix:{path}"):
        async def ask():
            c = QMPClient("test")
            await c.connect(path)
            try:
                return await c.execute("query-kvmkit-stats")
            finally:
                await c.disconnect()
        stats = asyncio.run(asyncio.wait_for(ask(), 10))
    assert stats["exits"]["total"] > 0 and len(stats["exits"]["per-cpu"]) == 1
    hc = stats["host-compat"]
    assert hc["enabled"] == m.compat.enabled
    if m.syscall_trap is not None:
        assert hc["syscall-trap"]["syscalls"] == m.syscall_trap.stats.syscalls >= 300
        assert hc["syscall-trap"]["page_faults"] == 5
