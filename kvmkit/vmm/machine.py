"""One VM's life: build a PC on /dev/kvm from a validated config, run its
vCPU threads, and answer the control API (:class:`kvmkit.vmm.api.VmControl`).

Build order: Kvm -> Vm -> in-kernel irqchip + PIT -> guest RAM slots ->
devices on the port/MMIO buses -> kernel, initrd, zero page, MP table ->
vCPUs (CPUID, MSRs, LAPIC, registers).  ``reset`` replays the parts that a
power cycle changes, in place, with the vCPUs parked.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from kvmkit.arch.x86 import acpi, boot, layout
from kvmkit.arch.x86.bootparams import E820_RAM, E820_RESERVED, E820Entry, ZeroPage
from kvmkit.arch.x86.cpuid import CpuidPolicy, build_cpuid
from kvmkit.arch.x86.loader import KernelImage, parse_kernel
from kvmkit.arch.x86.msrs import boot_msrs
from kvmkit.arch.x86.mptable import MPTABLE_ADDR, build_mptable
from kvmkit.devices.acpi_pm import AcpiPm
from kvmkit.devices.bus import Bus
from kvmkit.devices.context import DeviceContext, MmioAllocator
from kvmkit.devices.debugport import DEBUGCON_PORT, EXIT_PORT, DebugCon, DebugExit
from kvmkit.devices.i8042 import CTRL_ALT_DEL, KBD_IRQ, I8042
from kvmkit.devices.rtc import CmosRtc
from kvmkit.devices.serial import COM1_IRQ, COM1_PORT, Serial8250
from kvmkit.errors import ConfigError, GuestError, KvmUnavailableError
from kvmkit.kvm import Cap, Kvm
from kvmkit.kvm.constants import GUESTDBG_BLOCKIRQ, MpState
from kvmkit.memory.guest_memory import GuestMemory
from kvmkit.vmm import hostcompat
from kvmkit.vmm.api import ExitReason, RunState, VmEvent
from kvmkit.vmm.config import VmConfig
from kvmkit.vmm.console import Console
from kvmkit.vmm.hostcompat.completer import InstructionCompleter
from kvmkit.vmm.hostcompat.syscall_trap import SyscallTrap
from kvmkit.vmm.interrupts import KvmInterruptController
from kvmkit.vmm.vcpu_loop import VcpuThread, install_kick_handler

if TYPE_CHECKING:
    from kvmkit.vmm.snapshot import Snapshot, SnapshotInfo

log = logging.getLogger("kvmkit.vmm")

REQUIRED_CAPS = (Cap.IRQCHIP, Cap.USER_MEMORY, Cap.SET_TSS_ADDR, Cap.PIT2, Cap.IOEVENTFD,
                 Cap.IRQFD, Cap.IMMEDIATE_EXIT, Cap.EXT_CPUID)
APIC_LVT_LINT0, APIC_LVT_LINT1 = 0x350, 0x360
APIC_MODE_EXTINT, APIC_MODE_NMI = 0x7, 0x4
KVM_PV_MSRS = (0x4B564D00, 0x4B564D01, 0x4B564D02, 0x4B564D03, 0x4B564D04, 0x11, 0x12)

EXIT_STATUS = {ExitReason.POWEROFF: 0, ExitReason.HOST_QUIT: 0, ExitReason.REBOOT: 32,
               ExitReason.TRIPLE_FAULT: 33, ExitReason.ERROR: 1}


class Machine:
    """A running (or runnable) VM.  Use as a context manager, or call
    :meth:`start`, :meth:`wait` and :meth:`close`."""

    def __init__(self, config: VmConfig, *, compat: hostcompat.HostCompat | None = None,
                 restore: "Snapshot | None" = None, shared_memory: bool = False,
                 incoming: bool = False) -> None:
        self.config = config
        self._restore_from = restore
        self._incoming = incoming          # RAM and state arrive later (a migration stream)
        self._shared_memory = shared_memory
        self.name = config.name
        self.uuid = config.uuid
        self.kernel: KernelImage = parse_kernel(config.kernel)
        self.compat = compat or hostcompat.resolve(config.host_compat)
        log.info("%s", self.compat.describe())
        self._state = RunState.PRELAUNCH
        self._subscribers: list[Callable[[VmEvent], None]] = []
        self._ctl = threading.Condition()
        self._control_pending = False
        self._pause_requested = False
        self._stopping = False
        self._parked = 0
        self._exclusive: int | None = None     # vCPU id holding the others still (syscall trap fallback)
        self._done = threading.Event()
        self._paused_clock: int | None = None
        self.exit_reason: ExitReason | None = None
        self.exit_status: int | None = None
        self.error: Exception | None = None
        self.coalesced = None
        self.threads: list[VcpuThread] = []
        self.virtio_devices: list[Any] = []
        self._migration = None
        self._dirty_tracker = None
        self._snapshot_lineage = None      # last snapshot + pages dirtied since (diff snapshots)
        install_kick_handler()
        self.console = Console(config.serial, on_quit=self.quit)
        try:
            self._build()
        except BaseException:
            self._teardown()
            raise

    # ------------------------------------------------------------ build
    def _build(self) -> None:
        cfg = self.config
        self.kvm = Kvm()
        for cap in REQUIRED_CAPS:
            if not self.kvm.check_extension(cap):
                raise KvmUnavailableError(f"/dev/kvm lacks the {cap.name} capability kvmkit needs")
        max_vcpus = self.kvm.max_vcpus()
        if cfg.cpus > max_vcpus:
            raise ConfigError(f"--cpus {cfg.cpus} is more than this host's KVM allows ({max_vcpus})")
        if cfg.cpus > 254:
            raise ConfigError(f"--cpus {cfg.cpus}: at most 254 vCPUs without x2APIC support")
        self.resources = None
        if cfg.resources is not None and not cfg.resources.empty:
            from kvmkit.host.resources import VmResources
            self.resources = VmResources.apply(cfg.resources, cfg.name or "vm", cfg.cpus)
        else:
            from kvmkit.host.placement import RemotePlacement
            self.resources = RemotePlacement.from_env()     # jailed: the supervisor applies them
        self.vm = vm = self.kvm.create_vm()
        vm.set_tss_addr(layout.TSS_ADDR)
        vm.set_identity_map_addr(layout.IDENTITY_MAP_ADDR)
        vm.create_irqchip()
        vm.create_pit2()
        if self._restore_from is not None:
            self.memory = self._restore_from.map_memory(self._shared_memory)
        else:
            self.memory = GuestMemory.allocate(layout.ram_layout(cfg.memory), cfg.memory_backing)
        for r in self.memory.regions:
            addr = ctypes.addressof(ctypes.c_char.from_buffer(r.mapping))
            vm.set_user_memory_region(r.slot, r.guest_phys_addr, r.size, addr)
        self.irq = KvmInterruptController(vm)
        self.pio_bus = Bus("pio")
        self.mmio_bus = Bus("mmio")
        self.serial = Serial8250(self.irq.irq_line(COM1_IRQ), self.console.write, self._serial_polled_tx)
        self.i8042 = I8042(self.irq.irq_line(KBD_IRQ), self._i8042_reset)
        self.rtc = CmosRtc(cfg.memory)
        self.pio_bus.register(COM1_PORT, 8, self.serial)
        self.pio_bus.register(0x60, 5, self.i8042)
        self.pio_bus.register(0x70, 2, self.rtc)
        self.acpi_pm: AcpiPm | None = None
        if cfg.acpi:
            self.acpi_pm = AcpiPm(self.irq.irq_line(acpi.SCI_IRQ), on_poweroff=self._guest_poweroff,
                                  soft_off_typ=acpi.SLP_TYP_S5)
            self.pio_bus.register(acpi.PM1_EVT_PORT, acpi.PM_PORTS_LEN, self.acpi_pm)
        self.debug_output = bytearray()
        if cfg.debug_ports:
            self.pio_bus.register(DEBUGCON_PORT, 1, DebugCon(self.debug_output.extend))
            self.pio_bus.register(EXIT_PORT, 4, DebugExit(self._debug_exit))
        self.device_context = DeviceContext(
            memory=self.memory, pio_bus=self.pio_bus, mmio_bus=self.mmio_bus, irq=self.irq,
            vm=vm, mmio=MmioAllocator(layout.PCI_MMIO_START, layout.PCI_MMIO_END),
            block_error=self._block_io_error)
        if self.acpi_pm is not None and acpi.SCI_IRQ in self.device_context.isa_irqs_free:
            self.device_context.isa_irqs_free.remove(acpi.SCI_IRQ)   # the SCI owns IRQ 9
        if cfg.virtio is not None:
            from kvmkit.devices.virtio.attach import attach_virtio
            # An incoming machine takes its disks' locks once the stream has
            # ended (the source, on shared storage, holds them until then).
            self._disk_locks = None
            if not self._incoming:
                self.take_disk_locks()
            self.virtio_devices = attach_virtio(self.device_context, cfg.virtio)
        self.syscall_trap: SyscallTrap | None = None
        if self.compat.syscall_trap:
            self.syscall_trap = SyscallTrap(self.memory, self._hold_others, self._release_others,
                                            block_irq=bool(self.kvm.check_extension(Cap.SET_GUEST_DEBUG2)
                                                           & GUESTDBG_BLOCKIRQ))
        self.completer = InstructionCompleter(self.memory, self.compat.complete_int3,
                                              self.compat.complete_clac_stac, self.syscall_trap)
        self._initial_devices = self._device_states()
        if self._restore_from is None and not self._incoming:
            self._load_guest()
        self._create_vcpus()
        if self.kvm.check_extension(Cap.COALESCED_PIO):
            from kvmkit.vmm.coalesced import CoalescedWrites
            self.coalesced = CoalescedWrites(vm, self.vcpus[0].coalesced_ring(), self.pio_bus, self.mmio_bus)
            self._serial_polled_tx(True)
        self._initial_irqchips = [vm.get_irqchip(i) for i in range(3)]
        self._initial_pit = vm.get_pit2()
        if self._restore_from is not None:
            self._apply_snapshot(self._restore_from.body)
        # Input typed while the machine was being built goes to the UART now,
        # after a restore has loaded its FIFO (which would drop it).
        self.console.attach_input(self.serial.receive)

    def _serial_polled_tx(self, polled: bool) -> None:
        """Coalesce writes to COM1's transmit register while the guest polls
        it (the kernel console): one exit per character instead of two."""
        if self.coalesced is not None:
            self.coalesced.set_zone(COM1_PORT, 1, True, polled)

    def _legacy_devices(self) -> dict[str, Any]:
        """The machine's own stateful devices (virtio devices reset themselves)."""
        devices = {"serial": self.serial, "i8042": self.i8042, "rtc": self.rtc}
        if self.acpi_pm is not None:
            devices["acpi_pm"] = self.acpi_pm
        return devices

    def _device_states(self) -> dict[str, dict]:
        return {name: d.save_state() for name, d in self._legacy_devices().items()}

    # ------------------------------------------------------------ save / restore
    def _pci_host_state(self) -> dict | None:
        from kvmkit.devices.pci.host import find_host_bridge
        bridge = find_host_bridge(self.pio_bus)
        return None if bridge is None else bridge.save_state()

    def _compat_state(self) -> dict[str, Any]:
        return {"completed": dict(self.completer.counts), "xsave": self.completer.xsave.save_state(),
                "syscall-trap": self.syscall_trap.save_state() if self.syscall_trap is not None else None}

    def _apply_snapshot(self, body: dict[str, Any]) -> None:
        """Load a snapshot's state into this freshly built machine (its RAM
        is already the snapshot's memory file)."""
        from kvmkit.kvm import structs as S
        from kvmkit.vmm.snapshot import SnapshotError, apply_vcpu
        if len(body["vcpus"]) != len(self.vcpus):
            raise SnapshotError(f"snapshot has {len(body['vcpus'])} vCPUs, this machine {len(self.vcpus)}")
        saved = [(d["name"], d["kind"]) for d in body["virtio"]]
        here = [(d.name, d.kind) for d in self.virtio_devices]
        if saved != here:
            raise SnapshotError(f"snapshot's virtio devices {saved} differ from this machine's {here}")
        vm = self.vm
        for chip in body["vm"]["irqchips"]:
            vm.set_irqchip(S.kvm_irqchip.from_buffer_copy(bytes.fromhex(chip)))
        vm.set_pit2(S.kvm_pit_state2.from_buffer_copy(bytes.fromhex(body["vm"]["pit"])))
        for vcpu, record in zip(self.vcpus, body["vcpus"]):
            refused = apply_vcpu(vcpu, record)
            if refused:
                log.info("vCPU %d: KVM refused MSRs %s on restore", vcpu.id, ", ".join(map(hex, refused)))
        vm.set_clock(body["vm"]["clock"])
        for name, device in self._legacy_devices().items():
            if name in body["devices"]:
                device.load_state(body["devices"][name])
        if body.get("pci-host") is not None:
            from kvmkit.devices.pci.host import find_host_bridge
            find_host_bridge(self.pio_bus).load_state(body["pci-host"])
        for device, record in zip(self.virtio_devices, body["virtio"]):
            device.load_state(record["state"])
        compat = body.get("compat-state") or {}
        self.completer.counts.update(compat.get("completed", {}))
        if compat.get("xsave"):
            self.completer.xsave.load_state(compat["xsave"])
        if self.syscall_trap is not None and compat.get("syscall-trap"):
            self.syscall_trap.load_state(compat["syscall-trap"])

    def save_snapshot(self, directory: str | os.PathLike,
                      diff_from: str | os.PathLike | None = None) -> "SnapshotInfo":
        """Write the whole VM into ``directory`` (see :mod:`kvmkit.vmm.snapshot`),
        or with ``diff_from`` (the VM's last snapshot) only the pages dirtied
        since (:mod:`kvmkit.vmm.snapshot_diff`).  A running VM is paused for
        the copy and then continues; a paused one stays paused."""
        from kvmkit.vmm.snapshot_diff import save_tracked
        if self._done.is_set():
            raise GuestError("the VM has ended: nothing to snapshot")
        was_running = self._state == RunState.RUNNING
        if was_running:
            self.pause()
        elif not self.threads:
            pass                    # never started: the build state is the state
        try:
            with self._quiesced_devices():
                return save_tracked(self, directory, diff_from)
        finally:
            if was_running:
                self.resume()

    @property
    def dirty_tracker(self):
        """Dirty-page tracking (KVM's log + the VMM's writes) for migration and diff snapshots."""
        if self._dirty_tracker is None:
            from kvmkit.vmm.migration.dirty import DirtyTracker
            self._dirty_tracker = DirtyTracker(self)
        return self._dirty_tracker

    @property
    def migration(self):
        """This VM's outgoing migration (QMP migrate, query-migrate, migrate_cancel, parameters)."""
        if self._migration is None:
            from kvmkit.vmm.migration.source import MigrationControl
            self._migration = MigrationControl(self)
        return self._migration

    def _quiesced_devices(self):
        """Hold every virtio device's lock while its rings are captured, so
        no I/O thread moves an index between the queue record and RAM."""
        import contextlib
        stack = contextlib.ExitStack()
        for d in self.virtio_devices:
            stack.enter_context(d.lock)
        return stack

    @classmethod
    def restore(cls, directory: str | os.PathLike, *, shared_memory: bool = False,
                **overrides: Any) -> "Machine":
        """A new machine continuing where the snapshot in ``directory`` left
        off (not started: call :meth:`start`).  ``overrides`` replace config
        fields (``serial=``, ``start_paused=``, ``virtio=``...)."""
        from kvmkit.vmm.clone import same_macs
        from kvmkit.vmm.snapshot import Snapshot
        snap = Snapshot.open(directory)
        if "virtio" not in overrides:
            overrides["virtio"] = same_macs(snap)
        config = snap.config(**overrides)
        return cls(config, compat=hostcompat.resolve(config.host_compat), restore=snap,
                   shared_memory=shared_memory)

    def _pci_root(self) -> acpi.PciRoot | None:
        """The PCI host bridge as the firmware tables describe it: the DSDT
        names it (with ACPI, Linux only scans PCI roots the DSDT names) and
        the MP table routes its INTx slots."""
        from kvmkit.devices.pci.host import find_host_bridge
        bridge = find_host_bridge(self.pio_bus)
        if bridge is None:
            return None
        return acpi.PciRoot(intx=tuple((r.slot, r.pin, r.gsi) for r in bridge.intx_routes()))

    @property
    def cmdline(self) -> str:
        parts = [self.config.cmdline, *self.compat.cmdline_extra, *self.device_context.kernel_cmdline]
        return " ".join(p for p in parts if p)

    def _load_guest(self) -> None:
        """Kernel, initrd, command line, zero page, MP table, page tables."""
        cfg, mem, k = self.config, self.memory, self.kernel
        low_end = self.memory.regions[0].end
        if k.end > low_end:
            raise ConfigError(f"kernel {k.path} needs {k.end >> 20} MiB of memory; "
                              f"the VM has {cfg.memory >> 20} MiB")
        k.load(mem)
        zp = ZeroPage(k.setup_header if k.kind == "bzimage" else None)
        cmdline = self.cmdline.encode()
        if len(cmdline) >= min(k.cmdline_size, layout.CMDLINE_MAX):
            raise ConfigError(f"kernel command line is {len(cmdline)} bytes; "
                              f"this kernel accepts at most {k.cmdline_size - 1}")
        mem.write(layout.CMDLINE_ADDR, cmdline + b"\0")
        zp.set_cmdline(layout.CMDLINE_ADDR, len(cmdline))
        if cfg.initrd is not None:
            size = cfg.initrd.stat().st_size
            top = min(k.initrd_addr_max + 1, low_end)
            addr = (top - size) & ~(layout.PAGE_SIZE - 1)
            if addr < k.end:
                raise ConfigError(f"initrd {cfg.initrd} ({size >> 20} MiB) does not fit in "
                                  f"{cfg.memory >> 20} MiB beside the kernel")
            with open(cfg.initrd, "rb") as f:
                if f.readinto(mem.view(addr, size)) != size:
                    raise ConfigError(f"initrd {cfg.initrd}: short read")
            zp.set_initrd(addr, size)
        e820 = [E820Entry(0, layout.EBDA_START, E820_RAM),
                E820Entry(layout.EBDA_START, layout.EBDA_END - layout.EBDA_START, E820_RESERVED),
                E820Entry(layout.BIOS_START, layout.BIOS_END - layout.BIOS_START, E820_RESERVED),
                E820Entry(layout.HIMEM_START, low_end - layout.HIMEM_START, E820_RAM)]
        for r in self.memory.regions[1:]:
            e820.append(E820Entry(r.guest_phys_addr, r.size, E820_RAM))
        zp.set_e820(e820)
        mem.write(layout.ZERO_PAGE_ADDR, zp.bytes())
        pci_root = self._pci_root()
        pci_irqs = list(pci_root.intx) if pci_root is not None else []
        mem.write(MPTABLE_ADDR, build_mptable(cfg.cpus, pci_interrupts=pci_irqs))
        if self.acpi_pm is not None:
            for addr, table in acpi.build_acpi_tables(cfg.cpus, pci=pci_root):
                mem.write(addr, table)
        boot.write_page_tables(mem)
        boot.write_gdt(mem)

    def _create_vcpus(self) -> None:
        supported = self.kvm.supported_cpuid()
        policy = CpuidPolicy(hide=self.compat.hide_cpuid)
        msr_index = set(self.kvm.msr_index_list())
        self.vcpus = []
        self._initial_lapic = []
        for i in range(self.config.cpus):
            vcpu = self.vm.create_vcpu(i)
            vcpu.set_cpuid2(build_cpuid(supported, policy, i, self.config.cpus))
            self.vcpus.append(vcpu)
            lapic = vcpu.get_lapic()
            regs = bytearray(lapic.regs)
            for off, mode in ((APIC_LVT_LINT0, APIC_MODE_EXTINT), (APIC_LVT_LINT1, APIC_MODE_NMI)):
                v = int.from_bytes(regs[off:off + 4], "little")
                v = (v & ~0x700) | (mode << 8)
                regs[off:off + 4] = v.to_bytes(4, "little")
            self._initial_lapic.append(bytes(regs))
        self._msr_index = msr_index
        self._reset_vcpus()

    def _reset_vcpus(self) -> None:
        from kvmkit.kvm.structs import kvm_lapic_state
        msrs = boot_msrs(self._msr_index)
        msrs.update({m: 0 for m in KVM_PV_MSRS if m in self._msr_index})
        for i, vcpu in enumerate(self.vcpus):
            vcpu.set_lapic(kvm_lapic_state.from_buffer_copy(self._initial_lapic[i]))
            vcpu.set_msrs(msrs)
            ev = vcpu.get_vcpu_events()
            ev.exception.injected = ev.exception.pending = 0
            ev.interrupt.injected = 0
            ev.nmi.injected = ev.nmi.pending = 0
            ev.flags = 0
            vcpu.set_vcpu_events(ev)
            if i == 0:
                vcpu.set_sregs(boot.long_mode_sregs(vcpu.get_sregs()))
                vcpu.set_regs(boot.boot_regs(self.kernel.entry))
                fpu = vcpu.get_fpu()
                fpu.fcw, fpu.mxcsr = 0x37F, 0x1F80
                vcpu.set_fpu(fpu)
                vcpu.set_mp_state(MpState.RUNNABLE)
            else:
                vcpu.set_mp_state(MpState.UNINITIALIZED)

    # ------------------------------------------------------------ running
    def start(self) -> "Machine":
        if self.threads:
            return self
        if self.config.start_paused:
            with self._ctl:
                self._pause_requested = self._control_pending = True
        self._set_state(RunState.PAUSED if self.config.start_paused else RunState.RUNNING)
        self.threads = [VcpuThread(self, v) for v in self.vcpus]
        for t in self.threads:
            t.start()
        for t in self.threads:           # each placed itself (cgroup, CPUs, scheduler) before its first KVM_RUN
            t.ready.wait(10)
        return self

    def __enter__(self) -> "Machine":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def state(self) -> RunState:
        return self._state

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def wait(self, timeout: float | None = None) -> ExitReason | None:
        """Block until the VM ends; returns why (None on timeout)."""
        self._done.wait(timeout)
        return self.exit_reason

    def _vcpu_checkpoint(self, t: VcpuThread) -> bool:
        """Called by a vCPU thread when control is pending: park while
        paused; False when the thread must end."""
        with self._ctl:
            if self._stopping:
                return False
            if not self._must_park(t.vcpu.id):
                t.vcpu.run_state.immediate_exit = 0
                return True
            self._parked += 1
            self._ctl.notify_all()
            while self._must_park(t.vcpu.id) and not self._stopping:
                self._ctl.wait()
            self._parked -= 1
            self._ctl.notify_all()
            t.vcpu.run_state.immediate_exit = 0
            return not self._stopping

    def _must_park(self, vcpu_id: int) -> bool:
        return self._pause_requested or (self._exclusive is not None and self._exclusive != vcpu_id)

    def _hold_others(self, vcpu_id: int) -> bool:
        """From vCPU ``vcpu_id``'s thread: park every other vCPU and keep them
        parked until :meth:`_release_others`.  While another vCPU holds them,
        this one waits parked (so two holders cannot wait on each other).
        False when the machine is stopping."""
        with self._ctl:
            while self._exclusive is not None and self._exclusive != vcpu_id and not self._stopping:
                self._parked += 1
                self._ctl.notify_all()
                self._ctl.wait()
                self._parked -= 1
            if self._stopping:
                return False
            self._exclusive = vcpu_id
            self._control_pending = True
        others = [t for t in self.threads if t.vcpu.id != vcpu_id]
        for t in others:
            t.kick()
        with self._ctl:
            self._ctl.wait_for(lambda: self._parked >= sum(t.is_alive() for t in others) or self._stopping,
                               timeout=30)
            return not self._stopping

    def _release_others(self, vcpu_id: int) -> None:
        with self._ctl:
            if self._exclusive == vcpu_id:
                self._exclusive = None
            self._control_pending = self._stopping or self._pause_requested
            self._ctl.notify_all()

    def _park_all(self) -> None:
        with self._ctl:
            self._pause_requested = self._control_pending = True
        for t in self.threads:
            if t is not threading.current_thread():
                t.kick()
        with self._ctl:
            live = [t for t in self.threads if t.is_alive() and t is not threading.current_thread()]
            self._ctl.wait_for(lambda: self._parked >= len(live) or self._stopping, timeout=30)

    def _unpark_all(self) -> None:
        with self._ctl:
            self._pause_requested = False
            self._control_pending = self._stopping or self._exclusive is not None
            for t in self.threads:
                t.vcpu.run_state.immediate_exit = 0
            self._ctl.notify_all()

    # ------------------------------------------------------------ control API
    def pause(self) -> None:
        if self._state != RunState.RUNNING:
            return
        self._park_all()
        try:
            self._paused_clock = self.vm.get_clock().clock
            for v in self.vcpus:
                try:
                    v.kvmclock_ctrl()  # tell the guest it was paused: no soft-lockup warnings
                except Exception:
                    pass  # EINVAL until the guest has registered kvmclock
        except Exception:
            self._paused_clock = None
        self._set_state(RunState.PAUSED)
        self._emit("STOP")

    def _writable_disks(self) -> list[str]:
        virtio = self.config.virtio
        return [d.path for d in virtio.disks if not d.readonly] if virtio is not None else []

    def release_disk_locks(self) -> None:
        """Give up the one-writer locks on this machine's disks: a migration
        hands them to the destination as the source stops for good."""
        if getattr(self, "_disk_locks", None) is not None:
            self._disk_locks.release()
            self._disk_locks = None

    def take_disk_locks(self) -> None:
        """Take (again) the one-writer locks; raises ConfigError naming a disk
        another running VM holds (e.g. the destination of a migration)."""
        from kvmkit.vmm.disklock import DiskLocks
        if getattr(self, "_disk_locks", None) is None:
            self._disk_locks = DiskLocks(self._writable_disks())

    def resume(self) -> None:
        if self._state not in (RunState.PAUSED, RunState.POSTMIGRATE):
            return
        if self._state == RunState.POSTMIGRATE:
            self.take_disk_locks()             # refused while the migrated copy runs on these disks
        if self._paused_clock is not None:
            self.vm.set_clock(self._paused_clock)
            self._paused_clock = None
        self._set_state(RunState.RUNNING)
        self._unpark_all()
        self._emit("RESUME")
        for d in self.virtio_devices:          # werror/rerror=stop: run the held requests again
            if hasattr(d, "retry"):
                d.retry()

    def _block_io_error(self, data: dict) -> None:
        """A disk request failed (I/O thread): QEMU's BLOCK_IO_ERROR event and,
        for action 'stop', the VM paused (STOP) until 'cont'."""
        self._emit("BLOCK_IO_ERROR", data)
        if data.get("action") == "stop" and self._state == RunState.RUNNING:
            # Not on this thread: it holds the device lock a vCPU may be waiting
            # for, and pausing waits for every vCPU to park.
            threading.Thread(target=self.pause, name="io-error-stop", daemon=True).start()

    def reset(self, reason: str = "host-qmp-system-reset", guest: bool = False) -> None:
        """Power-cycle in place: RAM cleared, kernel reloaded, devices and vCPUs reset."""
        was_paused = self._state == RunState.PAUSED
        self._park_all()
        if self._stopping:
            return
        self.memory.clear()
        if self.syscall_trap is not None:
            self.syscall_trap.forget()            # the new kernel plants its own handler
        for chip in self._initial_irqchips:
            self.vm.set_irqchip(chip)
        self.vm.set_pit2(self._initial_pit)
        for name, device in self._legacy_devices().items():
            device.load_state(self._initial_devices[name])
        for d in self.virtio_devices:
            if hasattr(d, "reset"):
                d.reset()
        self._load_guest()
        self._reset_vcpus()
        self._emit("RESET", {"guest": guest, "reason": reason})
        if not was_paused:
            self._unpark_all()

    def powerdown(self) -> None:
        """Ask the guest to shut down: press the ACPI power button, or send
        Ctrl-Alt-Del through the keyboard controller on a machine without ACPI."""
        self._emit("POWERDOWN")
        if self.acpi_pm is not None:
            self.acpi_pm.press_power_button()
        else:
            self.i8042.send_keys(CTRL_ALT_DEL)

    def send_keys(self, scancodes: bytes) -> None:
        self.i8042.send_keys(scancodes)

    def quit(self) -> None:
        self._finish(ExitReason.HOST_QUIT, {"guest": False, "reason": "host-qmp-quit"})

    def subscribe(self, callback: Callable[[VmEvent], None]) -> Callable[[], None]:
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def query_cpus(self) -> list[dict[str, Any]]:
        out = []
        for i, t in enumerate(self.threads or [None] * len(self.vcpus)):
            out.append({"cpu-index": i, "thread-id": t.native_id if t and t.ready.is_set() else os.getpid(),
                        "qom-path": f"/machine/unattached/device[{i}]", "target": "x86_64",
                        "props": {"core-id": 0, "thread-id": 0, "socket-id": i, "node-id": 0}})
        return out

    def cpu_registers(self, cpu_index: int) -> dict[str, int]:
        if not 0 <= cpu_index < len(self.vcpus):
            raise ValueError(f"no CPU {cpu_index}: the VM has {len(self.vcpus)}")
        # A vCPU's registers can only be read while it is out of KVM_RUN.
        running = self._state == RunState.RUNNING and not self._done.is_set()
        if running:
            self._park_all()
        try:
            v = self.vcpus[cpu_index]
            regs, sregs = v.get_regs(), v.get_sregs()
            halted = v.get_mp_state() == MpState.HALTED
        finally:
            if running:
                self._unpark_all()
        out = {n: getattr(regs, n) for n, _ in regs._fields_}
        for seg in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"):
            s = getattr(sregs, seg)
            out[seg] = s.selector
            out[seg + "_base"] = s.base
            out[seg + "_limit"] = s.limit
            for attr in ("type", "s", "dpl", "present", "avl", "l", "db", "g"):
                out[f"{seg}_{attr}"] = getattr(s, attr)
        for n in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"):
            out[n] = getattr(sregs, n)
        out["gdt_base"], out["gdt_limit"] = sregs.gdt.base, sregs.gdt.limit
        out["idt_base"], out["idt_limit"] = sregs.idt.base, sregs.idt.limit
        out["halted"] = int(halted)
        return out

    def query_block(self) -> list[dict[str, Any]]:
        return [d.query() for d in self._disks()]

    def _disks(self) -> list[Any]:
        return [d for d in self.virtio_devices if getattr(d, "kind", "") == "virtio-blk"]

    @staticmethod
    def _qcow2_image(dev: Any) -> Any:
        from kvmkit.block.qcow2.image import Qcow2Image
        if not isinstance(dev.image, Qcow2Image):
            raise GuestError(f"disk {dev.name} ({dev.path}) is {dev.fmt}: internal snapshots need qcow2")
        return dev.image

    def internal_disk_snapshot(self, device: str, name: str, delete: bool = False) -> None:
        """Create (or delete) the qcow2 internal snapshot ``name`` in the disk
        ``device`` (``virtio0``... or its image path) through the VMM's own
        open image, with the device's I/O held: another process writing the
        metadata of an open qcow2 image would leave this one's caches stale
        (QMP blockdev-snapshot-internal-sync, as QEMU's)."""
        from kvmkit.block.qcow2 import snapshots as qsnap
        disks = self._disks()
        dev = next((d for d in disks if device in (d.name, d.path)), None)
        if dev is None:
            raise GuestError(f"no disk {device!r} (disks: {', '.join(d.name for d in disks) or 'none'})")
        image = self._qcow2_image(dev)
        with dev.lock:
            (qsnap.delete_snapshot if delete else qsnap.create_snapshot)(image, name)

    def savevm(self, directory: str | os.PathLike, name: str) -> "SnapshotInfo":
        """QEMU's savevm, kvmkit's way: the qcow2 internal snapshot ``name``
        in every writable disk and the VM state in ``directory``
        (:meth:`save_snapshot`), in one paused moment with every device's
        I/O held, so the disks agree with the memory (no request completes
        between the two).  Nothing is left of it if any part fails."""
        from kvmkit.block.qcow2 import snapshots as qsnap
        if self._done.is_set():
            raise GuestError("the VM has ended: nothing to snapshot")
        disks = [d for d in self._disks() if not d.readonly]
        images = [self._qcow2_image(d) for d in disks]
        was_running = self._state == RunState.RUNNING
        if was_running:
            self.pause()
        made = []
        try:
            with self._quiesced_devices():         # re-entered by save_snapshot: the locks are RLocks
                try:
                    for image in images:
                        qsnap.create_snapshot(image, name)
                        made.append(image)
                    return self.save_snapshot(directory)
                except BaseException:
                    for image in made:
                        qsnap.delete_snapshot(image, name)
                    raise
        finally:
            if was_running:
                self.resume()

    def _balloon(self):
        return next((d for d in self.virtio_devices if getattr(d, "kind", "") == "virtio-balloon"), None)

    def query_balloon(self) -> dict[str, Any] | None:
        b = self._balloon()
        return None if b is None else {"actual": b.guest_memory_size()}

    def balloon(self, target_bytes: int) -> bool:
        b = self._balloon()
        if b is None:
            return False
        b.set_guest_memory(min(target_bytes, self.memory.total_size))
        return True

    @property
    def exit_counts(self) -> dict[str, int]:
        return {"total": sum(t.exits for t in self.threads)}

    def start_profile(self, hz: float = 100.0):
        """Sample every vCPU's RIP ``hz`` times a second until the returned
        :class:`kvmkit.vmm.profiler.Profiler` is stopped; ``.write(path,
        kernel)`` then writes a symbolised report.  Call after :meth:`start`."""
        from kvmkit.vmm.profiler import Profiler
        return Profiler(self.threads, hz).start()

    def query_stats(self) -> dict[str, Any]:
        """kvmkit's own counters (QMP query-kvmkit-stats): exits per vCPU,
        instructions completed in the VMM, and the syscall trap's work."""
        out: dict[str, Any] = {
            "exits": {"total": sum(t.exits for t in self.threads),
                      "per-cpu": [t.exits for t in self.threads]},
            "host-compat": {"enabled": self.compat.enabled, "reason": self.compat.reason,
                            "completed": dict(self.completer.counts)},
        }
        if self.syscall_trap is not None:
            out["host-compat"]["syscall-trap"] = self.syscall_trap.stats.as_dict()
        return out

    # ------------------------------------------------------------ events
    def _set_state(self, state: RunState) -> None:
        self._state = state

    def _emit(self, name: str, data: dict | None = None) -> None:
        ev = VmEvent(name, data or {})
        for cb in list(self._subscribers):
            try:
                cb(ev)
            except Exception:
                log.exception("event subscriber failed")

    # ------------------------------------------------------------ endings
    def _i8042_reset(self) -> None:
        self._guest_reset("guest-reset")

    def _guest_reset(self, reason: str) -> None:
        if self.config.reboot_action == "reset":
            threading.Thread(target=self.reset, kwargs={"reason": reason, "guest": True},
                             daemon=True).start()
            return
        why = ExitReason.TRIPLE_FAULT if reason == "triple-fault" else ExitReason.REBOOT
        self._emit("RESET", {"guest": True, "reason": reason})
        self._finish(why, {"guest": True, "reason": "guest-reset"})

    def _guest_poweroff(self) -> None:
        self._finish(ExitReason.POWEROFF, {"guest": True, "reason": "guest-shutdown"})

    def _debug_exit(self, status: int) -> None:
        self._finish(ExitReason.POWEROFF, {"guest": True, "reason": "guest-shutdown"}, status)

    def _fail(self, error: Exception) -> None:
        self.error = error
        log.error("%s", error)
        self._set_state(RunState.INTERNAL_ERROR)
        self._finish(ExitReason.ERROR, None)

    def _finish(self, reason: ExitReason, shutdown_data: dict | None, status: int | None = None) -> None:
        with self._ctl:
            if self._stopping:
                return
            self._stopping = True
            self._control_pending = True
            self.exit_reason = reason
            self.exit_status = EXIT_STATUS[reason] if status is None else status
            self._ctl.notify_all()
        if self._state != RunState.INTERNAL_ERROR:
            self._set_state(RunState.SHUTDOWN)
        if shutdown_data is not None:
            self._emit("SHUTDOWN", shutdown_data)
        for t in self.threads:
            if t is not threading.current_thread():
                t.kick()
        self._done.set()

    def close(self) -> None:
        """Stop the VM if it runs, and release everything."""
        if self._migration is not None:
            self._migration.cancel()          # a migration in flight ends (cancelled) first
            self._migration.wait(10)
        if not self._done.is_set():
            self._finish(ExitReason.HOST_QUIT, {"guest": False, "reason": "host-qmp-quit"})
        for t in self.threads:
            if t is not threading.current_thread():
                t.join(timeout=10)
        self._teardown()

    def _teardown(self) -> None:
        self.release_disk_locks()
        for d in getattr(self, "virtio_devices", []):
            try:
                d.close()
            except Exception:
                log.exception("closing %r", d)
        if getattr(self, "coalesced", None) is not None:
            self.coalesced.close()
        for v in getattr(self, "vcpus", []):
            v.close()
        if getattr(self, "vm", None):
            self.vm.close()
        if getattr(self, "kvm", None):
            self.kvm.close()
        if getattr(self, "resources", None) is not None:
            self.resources.close()
        elif getattr(self, "threads", None):
            from kvmkit.host.resources import release_own
            release_own()                 # a tree the manager made for a live setting
        self.console.close()
