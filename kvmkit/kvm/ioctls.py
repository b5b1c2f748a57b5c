"""ioctl request numbers from ``<linux/kvm.h>``, computed the way the kernel's
``_IO``/``_IOR``/``_IOW``/``_IOWR`` macros do, from the sizes of the ctypes
structures in :mod:`kvmkit.kvm.structs` (so a struct and its ioctl cannot
drift apart)."""

from __future__ import annotations

import ctypes as C

from kvmkit.kvm import structs as S

_NONE, _WRITE, _READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_NONE, nr, 0)


def _ior(nr: int, typ) -> int:
    return _ioc(_READ, nr, C.sizeof(typ))


def _iow(nr: int, typ) -> int:
    return _ioc(_WRITE, nr, C.sizeof(typ))


def _iowr(nr: int, typ) -> int:
    return _ioc(_READ | _WRITE, nr, C.sizeof(typ))


_cpuid2 = S.kvm_cpuid2(0)
_msrs = S.kvm_msrs(0)
_msr_list = S.kvm_msr_list(0)
_routing = S.kvm_irq_routing(0)

# system fd
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, _msr_list)
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, _cpuid2)
KVM_GET_MSR_FEATURE_INDEX_LIST = _iowr(0x0A, _msr_list)

# vm fd
KVM_CREATE_VCPU = _io(0x41)
KVM_GET_DIRTY_LOG = _iow(0x42, S.kvm_dirty_log)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, S.kvm_userspace_memory_region)
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, C.c_uint64)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, S.kvm_irq_level)
KVM_GET_IRQCHIP = _iowr(0x62, S.kvm_irqchip)
KVM_SET_IRQCHIP = _ior(0x63, S.kvm_irqchip)
KVM_REGISTER_COALESCED_MMIO = _iow(0x67, S.kvm_coalesced_mmio_zone)
KVM_UNREGISTER_COALESCED_MMIO = _iow(0x68, S.kvm_coalesced_mmio_zone)
KVM_IRQ_LINE_STATUS = _iowr(0x67, S.kvm_irq_level)
KVM_SET_GSI_ROUTING = _iow(0x6A, _routing)
KVM_IRQFD = _iow(0x76, S.kvm_irqfd)
KVM_CREATE_PIT2 = _iow(0x77, S.kvm_pit_config)
KVM_IOEVENTFD = _iow(0x79, S.kvm_ioeventfd)
KVM_SET_CLOCK = _iow(0x7B, S.kvm_clock_data)
KVM_GET_CLOCK = _ior(0x7C, S.kvm_clock_data)
KVM_GET_PIT2 = _ior(0x9F, S.kvm_pit_state2)
KVM_SET_PIT2 = _iow(0xA0, S.kvm_pit_state2)
KVM_SIGNAL_MSI = _iow(0xA5, S.kvm_msi)
KVM_ENABLE_CAP = _iow(0xA3, S.kvm_enable_cap)

# vcpu fd
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, S.kvm_regs)
KVM_SET_REGS = _iow(0x82, S.kvm_regs)
KVM_GET_SREGS = _ior(0x83, S.kvm_sregs)
KVM_SET_SREGS = _iow(0x84, S.kvm_sregs)
KVM_TRANSLATE = _iowr(0x85, S.kvm_translation)
KVM_GET_MSRS = _iowr(0x88, _msrs)
KVM_SET_MSRS = _iow(0x89, _msrs)
KVM_GET_FPU = _ior(0x8C, S.kvm_fpu)
KVM_SET_FPU = _iow(0x8D, S.kvm_fpu)
KVM_GET_LAPIC = _ior(0x8E, S.kvm_lapic_state)
KVM_SET_LAPIC = _iow(0x8F, S.kvm_lapic_state)
KVM_SET_CPUID2 = _iow(0x90, _cpuid2)
KVM_GET_CPUID2 = _iowr(0x91, _cpuid2)
KVM_GET_MP_STATE = _ior(0x98, S.kvm_mp_state)
KVM_SET_MP_STATE = _iow(0x99, S.kvm_mp_state)
KVM_SET_GUEST_DEBUG = _iow(0x9B, S.kvm_guest_debug)
KVM_GET_VCPU_EVENTS = _ior(0x9F, S.kvm_vcpu_events)
KVM_SET_VCPU_EVENTS = _iow(0xA0, S.kvm_vcpu_events)
KVM_GET_DEBUGREGS = _ior(0xA1, S.kvm_debugregs)
KVM_SET_DEBUGREGS = _iow(0xA2, S.kvm_debugregs)
KVM_SET_TSC_KHZ = _io(0xA2)
KVM_GET_TSC_KHZ = _io(0xA3)
KVM_GET_XSAVE = _ior(0xA4, S.kvm_xsave)
KVM_SET_XSAVE = _iow(0xA5, S.kvm_xsave)
KVM_GET_XCRS = _ior(0xA6, S.kvm_xcrs)
KVM_SET_XCRS = _iow(0xA7, S.kvm_xcrs)
KVM_KVMCLOCK_CTRL = _io(0xAD)
