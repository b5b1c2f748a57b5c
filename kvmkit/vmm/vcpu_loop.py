"""One thread per vCPU: enter KVM_RUN, dispatch the exit, repeat.

The loop is the hot path (an exit here costs 25-100 µs in the kernel, so the
Python side must stay a small fraction of that): locals instead of attribute
chains, no allocation for the common port/MMIO cases.  Control (pause,
stop) reaches the thread by a kick: ``immediate_exit`` is set and a signal
interrupts KVM_RUN; the loop then parks or returns.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING

from kvmkit.errors import GuestError, KvmkitError
from kvmkit.kvm.constants import IO_OUT, Exit, SystemEvent
from kvmkit.kvm.vcpu import Vcpu

if TYPE_CHECKING:
    from kvmkit.vmm.machine import Machine

log = logging.getLogger("kvmkit.vcpu")

KICK_SIGNAL = signal.SIGRTMIN + 2


def install_kick_handler() -> None:
    """A no-op handler, so the kick signal interrupts KVM_RUN with EINTR
    instead of killing the process.  Must run in the main thread once."""
    if signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, signal.SIG_IGN, None):
        signal.signal(KICK_SIGNAL, lambda *_: None)


def _name_thread(name: str) -> None:
    """The calling thread's name in /proc/PID/task/TID/comm (QEMU's "CPU 0/KVM"),
    so ps, top and a manager can tell vCPU threads apart."""
    import ctypes
    try:
        ctypes.CDLL(None, use_errno=True).prctl(15, name.encode()[:15], 0, 0, 0)   # PR_SET_NAME
    except (OSError, AttributeError):
        pass


class VcpuThread(threading.Thread):
    def __init__(self, machine: "Machine", vcpu: Vcpu) -> None:
        super().__init__(name=f"vcpu{vcpu.id}", daemon=True)
        self.machine = machine
        self.vcpu = vcpu
        self.exits = 0
        self.exit_counts: dict[int, int] = {}
        self.profiler = None             # a kvmkit.vmm.profiler.Profiler while one samples
        self._sample_requested = False
        self.ready = threading.Event()   # set once the thread runs with its pinning and scheduler in place

    def request_sample(self) -> None:
        """Ask for one RIP sample: kick the vCPU out of KVM_RUN; the loop
        records it and re-enters (see :mod:`kvmkit.vmm.profiler`)."""
        self._sample_requested = True
        self.kick()

    def _take_sample(self) -> None:
        self._sample_requested = False
        if not self.machine._control_pending:
            self.vcpu.run_state.immediate_exit = 0
        p = self.profiler
        if p is not None:
            p.record(self.vcpu.id, self.vcpu.get_regs().rip)

    def kick(self) -> None:
        self.vcpu.run_state.immediate_exit = 1
        if self.ident is not None and self.is_alive():
            try:
                signal.pthread_kill(self.ident, KICK_SIGNAL)
            except ProcessLookupError:
                pass

    def run(self) -> None:
        m = self.machine
        _name_thread(f"CPU {self.vcpu.id}/KVM")
        if m.resources is not None:
            try:      # before the first KVM_RUN: the guest never runs unpinned or unlimited
                m.resources.place_vcpu(self.vcpu.id, threading.get_native_id())
            except KvmkitError as e:
                self.ready.set()
                m._fail(e)
                return
        self.ready.set()
        try:
            self._loop()
        except GuestError as e:
            m._fail(e)
        except Exception as e:  # a bug in a device must stop the VM, visibly
            log.exception("vCPU %d crashed", self.vcpu.id)
            m._fail(GuestError(f"vCPU {self.vcpu.id}: VMM error: {e!r}"))

    def _loop(self) -> None:
        m = self.machine
        vcpu = self.vcpu
        exit_union = vcpu.run_state.exit
        io = exit_union.io
        mmio = exit_union.mmio
        page = memoryview(vcpu.page)
        pio_read, pio_write = m.pio_bus.read, m.pio_bus.write
        mmio_read, mmio_write = m.mmio_bus.read, m.mmio_bus.write
        coalesced = m.coalesced
        drain = coalesced.drain if coalesced is not None else None
        ring = coalesced.ring if coalesced is not None else None
        vcpu_run = vcpu.run
        counts = self.exit_counts
        # host-compat's syscall trap looks at every exit (a byte compare, an
        # occasional ioctl) to plant and keep its int3 in the guest kernel.
        watch = m.syscall_trap.watch if m.syscall_trap is not None else None
        EXIT_IO, EXIT_MMIO, EXIT_INTR = Exit.IO, Exit.MMIO, Exit.INTR
        while True:
            if m._control_pending and not m._vcpu_checkpoint(self):
                return
            reason = vcpu_run()
            self.exits += 1
            if watch is not None:
                watch(vcpu)
            if ring is not None and ring[0:4] != ring[4:8]:
                drain()
            if reason == EXIT_IO:
                size = io.size
                off = io.data_offset
                port = io.port
                if io.direction == IO_OUT:
                    for i in range(io.count):
                        pio_write(port, size, int.from_bytes(page[off + i * size: off + (i + 1) * size], "little"))
                else:
                    for i in range(io.count):
                        page[off + i * size: off + (i + 1) * size] = pio_read(port, size).to_bytes(size, "little")
            elif reason == EXIT_MMIO:
                n = mmio.len
                if mmio.is_write:
                    mmio_write(mmio.phys_addr, n, int.from_bytes(bytes(mmio.data)[:n], "little"))
                else:
                    v = mmio_read(mmio.phys_addr, n)
                    for i in range(n):
                        mmio.data[i] = (v >> (8 * i)) & 0xFF
            elif reason == EXIT_INTR:
                if self._sample_requested:
                    self._take_sample()
            else:
                counts[reason] = counts.get(reason, 0) + 1
                if not self._rare_exit(reason):
                    return

    def _rare_exit(self, reason: int) -> bool:
        """Exits that are not port/MMIO I/O.  False ends this thread."""
        m = self.machine
        run = self.vcpu.run_state
        if reason == Exit.SHUTDOWN:
            m._guest_reset("triple-fault")
            return True
        if reason == Exit.SYSTEM_EVENT:
            ev = run.exit.system_event.type
            if ev == SystemEvent.SHUTDOWN:
                m._guest_poweroff()
            elif ev == SystemEvent.RESET:
                m._guest_reset("guest-reset")
            else:
                m._fail(GuestError(f"guest crashed (KVM system event {ev})"))
            return True
        if reason == Exit.INTERNAL_ERROR:
            m.completer.handle(self.vcpu)
            return True
        if reason == Exit.DEBUG and m.syscall_trap is not None and m.syscall_trap.step_done(self.vcpu):
            return True
        if reason == Exit.HLT:
            # Only without an in-kernel LAPIC; ours has one, so a halt with
            # interrupts off is a halted machine.
            m._fail(GuestError(f"vCPU {self.vcpu.id} halted"))
            return False
        if reason == Exit.FAIL_ENTRY:
            fe = run.exit.fail_entry
            raise GuestError(f"vCPU {self.vcpu.id}: KVM could not enter the guest "
                             f"(hardware reason {fe.hardware_entry_failure_reason:#x})")
        if reason in (Exit.IRQ_WINDOW_OPEN, Exit.IOAPIC_EOI):
            return True
        regs = self.vcpu.get_regs()
        try:
            name = Exit(reason).name
        except ValueError:
            name = str(reason)
        raise GuestError(f"vCPU {self.vcpu.id}: unexpected KVM exit {name} at RIP {regs.rip:#x}")
