"""The CPUID table a guest sees: KVM's supported set, edited by policy.

Starting from ``KVM_GET_SUPPORTED_CPUID`` keeps us honest about what the
host can virtualise; the policy then states topology (APIC IDs, core counts),
marks the hypervisor, exposes KVM's paravirt leaves (kvmclock) and hides what
the host-compatibility mode asks (e.g. CX16 on hosts whose emulator lacks
``cmpxchg16b``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from kvmkit.kvm.structs import kvm_cpuid_entry2

# (leaf, register, bit)
CX16 = (1, "ecx", 13)
XSAVE = (1, "ecx", 26)
OSXSAVE = (1, "ecx", 27)
HYPERVISOR = (1, "ecx", 31)
X2APIC = (1, "ecx", 21)
TSC_DEADLINE = (1, "ecx", 24)
PDCM = (1, "ecx", 15)
SMAP = (7, "ebx", 20)
POPCNT = (1, "ecx", 23)
ERMS = (7, "ebx", 9)          # enhanced rep movsb/stosb
FSRM = (7, "edx", 4)          # fast short rep movsb
INVTSC = (0x80000007, "edx", 8)

KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
KVM_CPUID_FEATURES = 0x40000001
KVM_FEATURE_CLOCKSOURCE2 = 3


@dataclass(frozen=True)
class CpuidPolicy:
    """What to change in the supported table, per VM."""

    hide: tuple[tuple[int, str, int], ...] = ()
    expose_kvm_pv: bool = True
    extra_hide_names: tuple[str, ...] = field(default=())


def build_cpuid(supported: list[kvm_cpuid_entry2], policy: CpuidPolicy,
                vcpu_id: int, nr_vcpus: int) -> list[kvm_cpuid_entry2]:
    """The table for one vCPU (they differ only in APIC IDs)."""
    table = [copy.copy(e) for e in supported]
    for e in table:
        if e.function == 1:
            e.ebx = (e.ebx & 0x0000FFFF) | (vcpu_id << 24) | (min(nr_vcpus, 255) << 16)
            e.ecx |= 1 << HYPERVISOR[2]
            if nr_vcpus > 1:
                e.edx |= 1 << 28  # HTT: the logical-processor count in EBX is valid
        elif e.function == 0xB or e.function == 0x1F:
            # Extended topology: one core per package level is enough for Linux
            # to count CPUs; keep x2APIC ID per vCPU.
            e.edx = vcpu_id
            if e.index == 0:
                e.eax, e.ebx, e.ecx = 0, 1, 0x100 | e.index
            elif e.index == 1:
                shift = max(1, (nr_vcpus - 1).bit_length())
                e.eax, e.ebx, e.ecx = shift, nr_vcpus, 0x200 | e.index
            else:
                e.eax = e.ebx = 0
                e.ecx = e.index
        elif e.function == 4:
            # Deterministic cache parameters: cores per package - 1 in EAX[31:26].
            e.eax = (e.eax & 0x03FFFFFF) | ((min(nr_vcpus, 64) - 1) << 26)
        elif e.function == 0x40000000 and policy.expose_kvm_pv:
            e.ebx, e.ecx, e.edx = (int.from_bytes(KVM_SIGNATURE[i:i + 4], "little") for i in (0, 4, 8))
        elif e.function == 0x80000008:
            # AMD core count: NC = cores - 1, ApicIdCoreIdSize = bits of APIC ID for the core
            bits = max(1, (nr_vcpus - 1).bit_length()) if nr_vcpus > 1 else 0
            e.ecx = (e.ecx & ~0xF0FF) | (bits << 12) | (min(nr_vcpus, 256) - 1)
        elif e.function == 0x8000001E:
            e.eax = vcpu_id
            e.ebx = (e.ebx & ~0xFF) | vcpu_id   # one thread per core, core id = vCPU
            e.ecx = 0
        elif e.function == 6:
            e.ecx &= ~1  # no APERF/MPERF: the guest would read MSRs we do not emulate
        elif e.function == INVTSC[0]:
            # No invariant TSC, as QEMU's default CPU models: with it Linux
            # rates kvm-clock below the TSC and clocks by a TSC that a
            # restore or a migration to another host would make jump.
            e.edx &= ~(1 << INVTSC[2])
    if not policy.expose_kvm_pv:
        table = [e for e in table if not 0x40000000 <= e.function <= 0x400000FF]
    for leaf, reg, bit in policy.hide:
        for e in table:
            if e.function == leaf and (leaf != 7 or e.index == 0):
                setattr(e, reg, getattr(e, reg) & ~(1 << bit))
    return table


def feature(table: list[kvm_cpuid_entry2], leaf: int, reg: str, bit: int, index: int = 0) -> bool:
    for e in table:
        if e.function == leaf and e.index == index:
            return bool(getattr(e, reg) >> bit & 1)
    return False
