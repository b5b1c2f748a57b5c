"""``Vm``: one KVM virtual machine file descriptor."""

from __future__ import annotations

import ctypes as C
import os

from kvmkit.kvm import constants as K
from kvmkit.kvm import ioctls as I
from kvmkit.kvm import structs as S
from kvmkit.kvm.fd import KvmFd


class Vm(KvmFd):
    """Memory slots, interrupt controller, timers and notification fds of
    one VM.  One method per ioctl; no policy."""

    def __init__(self, kvm, fd: int) -> None:
        super().__init__(fd)
        self.kvm = kvm

    def check_extension(self, cap: int) -> int:
        return self.ioctl(I.KVM_CHECK_EXTENSION, int(cap))

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        self.ioctl(I.KVM_SET_USER_MEMORY_REGION, S.kvm_userspace_memory_region(
            slot, flags, guest_phys_addr, size, userspace_addr))

    def set_tss_addr(self, addr: int) -> None:
        self.ioctl(I.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        self.ioctl(I.KVM_SET_IDENTITY_MAP_ADDR, C.c_uint64(addr))

    def create_irqchip(self) -> None:
        self.ioctl(I.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = K.PIT_SPEAKER_DUMMY) -> None:
        cfg = S.kvm_pit_config()
        cfg.flags = flags
        self.ioctl(I.KVM_CREATE_PIT2, cfg)

    def irq_line(self, irq: int, level: int) -> None:
        self.ioctl(I.KVM_IRQ_LINE, S.kvm_irq_level(irq, level))

    def signal_msi(self, address: int, data: int) -> int:
        """Deliver one MSI; returns >0 if delivered, 0 if blocked by the guest."""
        return self.ioctl(I.KVM_SIGNAL_MSI, S.kvm_msi(address & 0xFFFFFFFF, address >> 32, data))

    def set_gsi_routing(self, entries: list[S.kvm_irq_routing_entry]) -> None:
        table = S.kvm_irq_routing(len(entries))()
        table.nr = len(entries)
        for i, e in enumerate(entries):
            table.entries[i] = e
        self.ioctl(I.KVM_SET_GSI_ROUTING, table)

    def irqfd(self, fd: int, gsi: int, deassign: bool = False, resamplefd: int | None = None) -> None:
        flags = K.IRQFD_FLAG_DEASSIGN if deassign else 0
        if resamplefd is not None:
            flags |= K.IRQFD_FLAG_RESAMPLE
        self.ioctl(I.KVM_IRQFD, S.kvm_irqfd(fd, gsi, flags, resamplefd or 0))

    def ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool = False,
                  datamatch: int | None = None, deassign: bool = False) -> None:
        flags = (K.IOEVENTFD_FLAG_PIO if pio else 0) | (K.IOEVENTFD_FLAG_DEASSIGN if deassign else 0)
        if datamatch is not None:
            flags |= K.IOEVENTFD_FLAG_DATAMATCH
        self.ioctl(I.KVM_IOEVENTFD, S.kvm_ioeventfd(datamatch or 0, addr, length, fd, flags))

    def register_coalesced_mmio(self, addr: int, size: int, pio: bool = False) -> None:
        self.ioctl(I.KVM_REGISTER_COALESCED_MMIO, S.kvm_coalesced_mmio_zone(addr, size, int(pio)))

    def unregister_coalesced_mmio(self, addr: int, size: int, pio: bool = False) -> None:
        self.ioctl(I.KVM_UNREGISTER_COALESCED_MMIO, S.kvm_coalesced_mmio_zone(addr, size, int(pio)))

    def get_clock(self) -> S.kvm_clock_data:
        d = S.kvm_clock_data()
        self.ioctl(I.KVM_GET_CLOCK, d)
        return d

    def set_clock(self, clock: int) -> None:
        d = S.kvm_clock_data()
        d.clock = clock
        self.ioctl(I.KVM_SET_CLOCK, d)

    def get_irqchip(self, chip_id: int) -> S.kvm_irqchip:
        c = S.kvm_irqchip()
        c.chip_id = chip_id
        self.ioctl(I.KVM_GET_IRQCHIP, c)
        return c

    def set_irqchip(self, chip: S.kvm_irqchip) -> None:
        self.ioctl(I.KVM_SET_IRQCHIP, chip)

    def get_pit2(self) -> S.kvm_pit_state2:
        p = S.kvm_pit_state2()
        self.ioctl(I.KVM_GET_PIT2, p)
        return p

    def set_pit2(self, state: S.kvm_pit_state2) -> None:
        self.ioctl(I.KVM_SET_PIT2, state)

    def get_dirty_log(self, slot: int, npages: int) -> bytearray:
        """The dirty bitmap of ``slot`` (one bit per 4 KiB page), cleared by the read."""
        bitmap = (C.c_uint64 * ((npages + 63) // 64))()
        self.ioctl(I.KVM_GET_DIRTY_LOG, S.kvm_dirty_log(slot, 0, C.addressof(bitmap)))
        return bytearray(bitmap)

    def enable_cap(self, cap: int, *args: int) -> None:
        c = S.kvm_enable_cap()
        c.cap = cap
        for i, a in enumerate(args):
            c.args[i] = a
        self.ioctl(I.KVM_ENABLE_CAP, c)

    def create_vcpu(self, vcpu_id: int) -> "Vcpu":
        from kvmkit.kvm.vcpu import Vcpu
        return Vcpu(self, vcpu_id, self.ioctl(I.KVM_CREATE_VCPU, vcpu_id))


def eventfd(initval: int = 0, nonblock: bool = True) -> int:
    """A new eventfd (for ioeventfd/irqfd), close-on-exec."""
    flags = os.EFD_CLOEXEC | (os.EFD_NONBLOCK if nonblock else 0)
    return os.eventfd(initval, flags)
