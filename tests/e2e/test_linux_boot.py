"""Real Linux boots (slow: tens of seconds on hosts whose KVM emulates guest
kernel code).  The session's one boot of the fast guest, with 2 vCPUs
(``fast_shell`` in tests/conftest.py, saved at its shell prompt), serves
every check of this module: the kernel's own report of the machine (its
boot log), then, restored in milliseconds, its busybox shell on the serial
console (uname, nproc, tmpfs, the clocksource, the date, both CPUs busy at
once, a segfaulting program, the syscall trap's security case, a syscall
and page-fault load), and ``reboot`` in a restore of its own.  Debian's
stock kernel has its own opt-in marker (``-m stock``).
"""

from __future__ import annotations

import re
import time

import pytest

from kvmkit.vmm.api import ExitReason

pytestmark = [pytest.mark.slow, pytest.mark.kvm]

BOOT_TIMEOUT = 900
PROMPT = rb"root@kvmkit:~# "


def _assets(name):
    from kvmkit.guest import assets
    return getattr(assets, f"{name}_guest")(build=True)


class BootRecord:
    def __init__(self, machine, boot_log: str, boot_stats: dict):
        self.m = machine
        self.boot_log, self.boot_stats = boot_log, boot_stats

    @property
    def text(self) -> str:
        """The boot's console, then this restore's."""
        return self.boot_log + self.m.console.text

    def sh(self, command: str, timeout: float = 300) -> str:
        """Run ``command`` at the guest's shell; its output (exit status 0 asserted)."""
        rc, out = self.m.console.shell(command, timeout, alive=lambda: self.m.running)
        assert rc == 0, f"{command!r} exited {rc}: {out}"
        return out.strip()


def _restored(fast_shell, log) -> BootRecord:
    print(f"fast guest console: {log} (boot: {fast_shell.boot_seconds:.1f} s, once per session)")
    m = fast_shell.restore(serial=f"file:{log}")
    rec = BootRecord(m, fast_shell.boot_log, fast_shell.boot_stats)
    rec.sh("hwclock -s")                # the wall clock continues from the save: set it from the RTC
    return rec


@pytest.fixture(scope="module")
def fast_boot(fast_shell, tmp_path_factory):
    """The fast guest with 2 vCPUs at its shell prompt (the session's boot, restored)."""
    rec = _restored(fast_shell, tmp_path_factory.mktemp("boot") / "console.log")
    try:
        yield rec
    finally:
        rec.m.close()


# --- what the kernel reports ------------------------------------------------

def test_kernel_prints_its_version(fast_boot):
    assert re.search(r"Linux version 6\.1\.\d+", fast_boot.text)


def test_both_cpus_brought_up(fast_boot):
    assert re.search(r"smp: Brought up 1 node, 2 CPUs", fast_boot.text), fast_boot.text[-2000:]


def test_memory_matches_config(fast_boot):
    m = re.search(r"Memory: (\d+)K/(\d+)K available", fast_boot.text)
    assert m, "no Memory: line"
    assert 112 * 1024 < int(m.group(2)) <= 128 * 1024


def test_initrd_unpacked(fast_boot):
    t = fast_boot.text
    assert "Initramfs unpacking failed" not in t
    assert re.search(r"Freeing initrd memory|Trying to unpack rootfs|Unpacking initramfs", t), t[-2000:]


def test_host_compat_applied_and_logged(fast_boot):
    m = fast_boot.m
    if m.compat.enabled:
        assert "clearcpuid=popcnt,smap" in m.cmdline and ",xsaves," in m.cmdline
        assert m.completer.counts.get("xsave", 0) > 10 and m.completer.counts.get("xrstor", 0) > 10
        assert re.search(r"Clearing CPUID bits: .*popcnt", fast_boot.text)
        assert m.completer.counts.get("int3", 0) >= 1   # the alternatives self-test
        assert m.syscall_trap is not None and m.syscall_trap.plant is not None
        assert fast_boot.boot_stats["host-compat"]["syscall-trap"]["syscalls"] > 100   # init and the shell made them
        assert "syscall completed in the VMM" in m.compat.describe()
    else:
        assert "clearcpuid" not in m.cmdline and m.syscall_trap is None


# --- the shell ------------------------------------------------------------------

def test_uname(fast_boot):
    assert re.fullmatch(r"6\.1\.\d+", fast_boot.sh("uname -r"))


def test_nproc_and_cpuinfo_see_two_cpus(fast_boot):
    assert fast_boot.sh("nproc") == "2"
    assert fast_boot.sh("grep -c processor /proc/cpuinfo") == "2"


def test_tmpfs_file_round_trip(fast_boot):
    assert fast_boot.sh("echo hi > /tmp/f; cat /tmp/f") == "hi"
    assert "tmpfs" in fast_boot.sh("grep ' /tmp ' /proc/mounts")


def test_clocksource_is_kvm_clock(fast_boot):
    assert fast_boot.sh("cat /sys/devices/system/clocksource/clocksource0/current_clocksource") == "kvm-clock"


def test_date_advances_with_the_host(fast_boot):
    first = int(fast_boot.sh("date +%s"))
    host_first = time.time()
    time.sleep(3)
    second = int(fast_boot.sh("date +%s"))
    host_second = time.time()
    assert 2 <= second - first <= host_second - host_first + 2
    assert abs(second - host_second) < 10, "the guest's clock (from the RTC) is off the host's"


def test_busy_loops_run_on_both_cpus(fast_boot):
    """Two CPU-bound shell loops finish in about the time of one, and both
    CPUs accumulate user time while they run."""
    loop = "i=0; while [ $i -lt 1000000 ]; do i=$((i+1)); done"

    def timed(command: str) -> float:
        t = time.monotonic()
        fast_boot.sh(command)
        return time.monotonic() - t

    def user_ticks() -> list[int]:
        lines = fast_boot.sh("grep '^cpu[0-9]' /proc/stat").splitlines()
        return [int(line.split()[1]) for line in lines]

    # The host has two cores and other work: the best of three tries, as a
    # benchmark would, so a moment of host contention is not a verdict.
    tries = []
    for _ in range(3):
        one = timed(f"({loop}) & wait")
        before = user_ticks()
        two = timed(f"({loop}) & ({loop}) & wait")
        after = user_ticks()
        tries.append((two / one, one, two, before, after))
        if two < 1.5 * one:
            break
    # Serial would be >= 2.0.  Measured here: 1.4-1.7, the cost of the
    # guest's timer ticks, emulated on both CPUs at once (the loops make
    # almost no exits); the per-CPU user time below shows both ran.
    ratio, one, two, before, after = min(tries, key=lambda t: t[0])
    assert ratio < 1.8, tries
    assert all(b - a > 0.3 * one * 100 for a, b in zip(before, after)), (before, after, one)


def test_segfaulting_program_gets_sigsegv_and_the_vm_lives(fast_boot):
    rc, out = fast_boot.m.console.shell("kvmkit-probe segv")
    assert rc == 139 and "writing to address 0" in out      # 128 + SIGSEGV
    assert fast_boot.sh("echo alive") == "alive"


def test_jump_to_lstar_gains_nothing(fast_boot):
    """A ring-3 program jumps to the kernel's syscall entry without
    executing `syscall`, R11 asking for IOPL 3, NT, VIF and VIP: it gets a
    syscall's worth (RFLAGS as ring 3 may have them), and port I/O still
    faults (SIGSEGV)."""
    from kvmkit.arch.x86.elf_symbols import SymbolTable
    syms = SymbolTable.from_elf(fast_boot.m.kernel.path)
    entry = next(a for a, _, n in syms._syms if n == "entry_SYSCALL_64")
    rc, out = fast_boot.m.console.shell(f"kvmkit-probe lstar {entry:x}")
    flags = int(re.search(r"rflags 0x([0-9a-f]{16})", out).group(1), 16)
    assert flags & (3 << 12) == 0, f"IOPL {flags >> 12 & 3} in ring 3"
    assert not flags & ((1 << 14) | (1 << 19) | (1 << 20)), hex(flags)
    assert flags & (1 << 9)
    assert "trying port I/O" in out and "port I/O allowed" not in out
    assert rc == 139
    if fast_boot.m.syscall_trap is not None:
        assert fast_boot.m.syscall_trap.stats.r11_sanitised >= 1


def test_syscall_and_page_fault_load_keeps_time_and_interrupts(fast_boot):
    """Hundreds of thousands of syscalls and page faults on both vCPUs: every
    one completes (the program counts), the guest clock keeps up with the
    host's, and timer interrupts keep arriving on both CPUs."""
    def timer_irqs() -> list[int]:
        line = fast_boot.sh("grep LOC: /proc/interrupts")
        return [int(x) for x in line.split()[1:3]]

    guest_t0, host_t0 = float(fast_boot.sh("cat /proc/uptime").split()[0]), time.monotonic()
    irqs0 = timer_irqs()
    stats0 = fast_boot.m.query_stats()
    out = fast_boot.sh("kvmkit-probe getppid 100000 & kvmkit-probe getppid 100000 & "
                       "kvmkit-probe touch 3000 & kvmkit-probe touch 3000 & wait", timeout=1800)
    assert sorted(out.split()) == ["100000", "100000", "3000", "3000"]
    guest_t1, host_t1 = float(fast_boot.sh("cat /proc/uptime").split()[0]), time.monotonic()
    irqs1 = timer_irqs()
    assert abs((guest_t1 - guest_t0) - (host_t1 - host_t0)) < 2, "guest time drifted from the host's"
    assert all(b > a for a, b in zip(irqs0, irqs1)), (irqs0, irqs1)
    trap = fast_boot.m.syscall_trap
    if trap is not None:
        done = fast_boot.m.query_stats()["host-compat"]["syscall-trap"]
        before = stats0["host-compat"]["syscall-trap"]
        assert done["syscalls"] - before["syscalls"] >= 200000
        assert done["page_faults"] - before["page_faults"] >= 6000
        assert done["fallbacks"] == 0


@pytest.mark.parametrize("regs", ["xmm", "ymm"])
def test_vector_registers_survive_context_switches(fast_boot, regs):
    """Two programs on each CPU fill every XMM (or full YMM) register with
    their own values and check them after each yield, interrupt and page
    fault: the guest kernel's xsave/xrstor (completed in the VMM here) and,
    for YMM, the VMM's shadow of the upper halves keep each task's state.
    Before the shadow, about 3 checks in 4 saw another task's values, and
    glibc's AVX2 memcpy dropped bytes."""
    modes = ("yield", "spin", "fault") if regs == "ymm" else ("", "spin", "fault")
    for mode in modes:
        cmd = f"kvmkit-probe {regs} {mode} 300" if regs == "ymm" else f"kvmkit-probe {regs}{mode} 300"
        out = fast_boot.sh(" & ".join([cmd] * 4) + " & wait", timeout=900)
        assert out.split() == ["0"] * 4, (cmd, out)


def test_glibc_programs_copy_bytes_intact(fast_boot):
    """busybox (glibc, AVX2 memcpy on this host's CPUID) moving 4 MiB
    through a pipe, twice at once: every copy hashes the same."""
    fast_boot.sh("dd if=/dev/urandom of=/tmp/r bs=1M count=4 2>/dev/null")
    want = fast_boot.sh("sha256sum /tmp/r").split()[0]
    out = fast_boot.sh("for i in 1 2 3; do cat /tmp/r | cat | sha256sum & cat /tmp/r | sha256sum & wait; done",
                       timeout=900)
    got = out.split()[::2]
    assert got == [want] * 6, out


def test_snapshot_restores_in_a_new_machine_at_the_shell(fast_boot, tmp_path):
    """Save the running guest, then restore it into a second machine: the
    tmpfs file written before the save is there, one written after is not,
    both CPUs and the clock run, and the copy powers off cleanly while the
    original keeps going."""
    from kvmkit.vmm.config import SerialSpec
    from kvmkit.vmm.machine import Machine
    fast_boot.sh("echo before > /tmp/snap")
    info = fast_boot.m.save_snapshot(tmp_path / "snap")
    assert info.memory_bytes == 128 << 20 and 0 < info.written_bytes < info.memory_bytes
    fast_boot.sh("echo after > /tmp/snap")
    copy = Machine.restore(tmp_path / "snap", serial=SerialSpec.parse(f"file:{tmp_path / 'copy.log'}"))
    copy.start()
    try:
        rc, out = copy.console.shell("cat /tmp/snap; nproc; kvmkit-probe getppid 1000", 300,
                                     alive=lambda: copy.running)
        assert rc == 0 and out.split() == ["before", "2", "1000"], out
        t0 = float(copy.console.shell("cat /proc/uptime", 60)[1].split()[0])
        time.sleep(2)
        t1 = float(copy.console.shell("cat /proc/uptime", 60)[1].split()[0])
        assert 1.5 < t1 - t0 < 30, (t0, t1)
        copy.console.send("poweroff\n")
        assert copy.wait(300) == ExitReason.POWEROFF, copy.console.text[-2000:]
    finally:
        copy.close()
    assert fast_boot.sh("cat /tmp/snap") == "after"


def test_no_kernel_warnings(fast_boot):
    """Nothing but the faults the probe program asked for (its segfault, its
    port I/O after the LSTAR jump)."""
    lines = [line for line in fast_boot.text.splitlines() if "kvmkit-probe" not in line]
    for bad in ("WARNING:", "BUG:", "Oops", "rcu_sched self-detected stall", "soft lockup",
                "clocksource: timekeeping watchdog", "segfault at", "traps:"):
        found = [line for line in lines if bad in line]
        assert not found, found


def test_reboot_gives_the_reboot_status(fast_shell, tmp_path):
    """In a restore of its own (the others go on): busybox's reboot (a
    signal to init, then an orderly shutdown) ends the VM with kvmkit's
    reboot status."""
    rec = _restored(fast_shell, tmp_path / "console.log")
    try:
        rec.m.console.send("reboot\n")
        assert rec.m.wait(120) == ExitReason.REBOOT, rec.text[-2000:]
        assert rec.m.exit_status == 32
    finally:
        rec.m.close()


# --- Debian's stock kernel (opt-in: -m stock) ------------------------------

@pytest.mark.stock
@pytest.mark.timeout(4 * 3600)     # the generic kernel's boot is emulated instruction by instruction here
def test_stock_kernel_reaches_its_shell_with_virtio_modules(tmp_path):
    from kvmkit.devices.virtio.config import DiskSpec, NetSpec, VirtioSpecs
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine
    g = _assets("stock")
    disk = tmp_path / "disk.raw"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    specs = VirtioSpecs(disks=(DiskSpec(str(disk)),), nets=(NetSpec(),))
    with Machine(VmConfig.build(g.vmlinux, initrd=g.initrd, cmdline=g.cmdline, memory="512M", cpus=1,
                                serial=f"file:{tmp_path / 'console.log'}", virtio=specs)) as m:
        m.console.expect(rb"Linux version 6\.1", timeout=600, alive=lambda: m.running)
        m.console.expect(PROMPT, timeout=3 * 3600, alive=lambda: m.running)
        rc, out = m.console.shell("cat /proc/modules", timeout=600)
        for module in ("virtio_pci", "virtio_blk", "virtio_net"):
            assert module in out
        rc, out = m.console.shell("cat /sys/block/vda/size; ls /sys/class/net", timeout=600)
        assert "32768" in out and "eth0" in out
        m.console.send("poweroff\n")
        assert m.wait(600) == ExitReason.POWEROFF


def test_bzimage_boot_protocol_reaches_the_kernel():
    """The other kernel form: the bzImage's protected-mode part at 1 MiB,
    entered at its 64-bit entry; the kernel decompresses itself (under
    emulation on these hosts) and prints its banner."""
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine
    g = _assets("fast")
    with Machine(VmConfig.build(g.bzimage, initrd=g.initrd, cmdline=g.cmdline, memory="128M")) as m:
        assert m.kernel.kind == "bzimage"
        m.console.expect(rb"Linux version 6\.1", timeout=BOOT_TIMEOUT, alive=lambda: m.running)
        m.console.expect(rb"Command line: .*console=ttyS0", timeout=60, alive=lambda: m.running)
