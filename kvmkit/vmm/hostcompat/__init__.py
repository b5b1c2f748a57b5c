"""Host compatibility: workarounds for hosts whose KVM runs guest kernel code
through its instruction emulator (nested KVM on the ``kvm_pvm`` backend; see
HOST-NOTES), and a probe that tells such a host from one with VT-x/SVM.

The probe runs ``int3`` at CPL0 in a tiny 64-bit guest with an empty IDT.  On
VT-x/SVM the CPU raises #BP, fails to deliver it and the guest triple-faults
(KVM_EXIT_SHUTDOWN).  On an emulating host the emulator does not know
``int3`` and KVM reports an emulation failure.  Nothing is applied on a host
that does not need it.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

from kvmkit.arch.x86 import cpuid as cpuidbits

log = logging.getLogger("kvmkit.hostcompat")


@dataclass(frozen=True)
class HostCompat:
    """What to do about the emulator's gaps.  ``enabled=False`` changes nothing."""

    enabled: bool
    reason: str = ""
    hide_cpuid: tuple[tuple[int, str, int], ...] = ()
    cmdline_extra: tuple[str, ...] = ()
    complete_int3: bool = False
    complete_clac_stac: bool = False
    syscall_trap: bool = False

    def describe(self) -> str:
        if not self.enabled:
            return f"host-compat off ({self.reason})" if self.reason else "host-compat off"
        hidden = ", ".join(FEATURE_NAMES.get(f, f"CPUID.{f[0]:#x}:{f[1].upper()}[{f[2]}]")
                           for f in self.hide_cpuid)
        trap = "; syscall completed in the VMM (trap on the #PF handler)" if self.syscall_trap else ""
        return (f"host-compat on ({self.reason}): hide {hidden}; guest cmdline += "
                f"'{' '.join(self.cmdline_extra)}'; int3 -> #BP injection; fwait, lsl, ldmxcsr, stmxcsr, "
                f"xsave, xrstor, clac, stac completed in the VMM{trap}")


# KVM paravirt features whose guest side issues hypercalls; the emulating
# host never completes the hypercall instruction (the vCPU spins on it), so
# the guest must fall back to plain IPIs, HLT and native TLB flushes.
KVM_PV_HYPERCALL_FEATURES = tuple((cpuidbits.KVM_CPUID_FEATURES, "eax", bit) for bit in (
    7,    # PV_UNHALT: KVM_HC_KICK_CPU
    9,    # PV_TLB_FLUSH
    11,   # PV_SEND_IPI: KVM_HC_SEND_IPI
    13,   # PV_SCHED_YIELD: KVM_HC_SCHED_YIELD
))

FEATURE_NAMES = {
    cpuidbits.CX16: "cx16",
    cpuidbits.ERMS: "erms",
    cpuidbits.FSRM: "fsrm",
    **{(cpuidbits.KVM_CPUID_FEATURES, "eax", bit): name for bit, name in (
        (7, "kvm-pv-unhalt"), (9, "kvm-pv-tlb-flush"), (11, "kvm-pv-send-ipi"), (13, "kvm-pv-sched-yield"))},
}

EMULATING_HOST = HostCompat(
    enabled=True,
    # ERMS/FSRM: with them the kernel clears and copies pages with `rep
    # stosb`/`rep movsb`, which the emulator runs one byte per step (~0.6 µs
    # a byte, 2.5 ms a page); without them it uses `rep stosq`/`rep movsq`,
    # 7-8x faster here (measured with a tiny guest).
    hide_cpuid=(cpuidbits.CX16, cpuidbits.ERMS, cpuidbits.FSRM, *KVM_PV_HYPERCALL_FEATURES),
    # popcnt and smap: emulator gaps (HOST-NOTES).  The SIMD extensions:
    # distro kernels run SSSE3/SSE4/AES-NI/PCLMUL/SHA code in kernel mode
    # (crypto self-tests at boot), which the emulator lacks; without them the
    # kernel picks its generic C implementations.
    # Then what only makes the emulated kernel slow here (kvmkit run --profile
    # shows each): tsc=reliable, since the clocksource watchdog mistakes
    # emulation delays for a bad clock; noreplace-smp, since a 1-vCPU kernel
    # otherwise text_pokes every lock prefix (~3 s); percpu_alloc=page, since
    # the embedded first chunk zeroes 2 MiB with `rep stosb` (~1.5 s);
    # random.trust_cpu=on, since without RDRAND seeding the RNG mixes entropy
    # in emulated code for seconds.
    # XSAVE stays (the VMM completes xsave/xrstor: xsave.py) with XCR0 cut
    # to x87|SSE: guest user space sees the host's CPUID natively and would
    # otherwise use AVX state a noxsave kernel never saves.  Only the
    # standard form: no XSAVEOPT/XSAVEC/XSAVES/XGETBV1, no PKU.
    cmdline_extra=("clearcpuid=popcnt,smap,ssse3,sse4_1,sse4_2,aes,pclmulqdq,sha_ni,avx,avx2,erms,fsrm,"
                   "fma,f16c,xsaveopt,xsavec,xsaves,xgetbv1,pku,ospke",
                   "tsc=reliable", "noreplace-smp", "percpu_alloc=page", "random.trust_cpu=on"),
    complete_int3=True,
    complete_clac_stac=True,
    # syscall from ring 3 stays in ring 3 here (HOST-NOTES): syscall_trap.py
    syscall_trap=True,
)


def resolve(mode: str) -> HostCompat:
    """``mode`` is auto, on or off."""
    if mode == "off":
        return HostCompat(False, "disabled by option")
    if mode == "on":
        return _with_reason(EMULATING_HOST, "forced by option")
    emulating, why = probe()
    if emulating:
        return _with_reason(EMULATING_HOST, why)
    return HostCompat(False, why)


def _with_reason(hc: HostCompat, reason: str) -> HostCompat:
    from dataclasses import replace
    return replace(hc, reason=reason)


@functools.lru_cache(maxsize=1)
def probe() -> tuple[bool, str]:
    """(emulating, explanation). Runs a one-instruction guest once per process."""
    from kvmkit.kvm import Kvm
    from kvmkit.kvm.constants import Exit, InternalError
    from kvmkit.memory.guest_memory import GuestMemory
    from kvmkit.arch.x86 import boot

    pvm = os.path.isdir("/sys/module/kvm_pvm")
    try:
        with Kvm() as kvm:
            vm = kvm.create_vm()
            mem = GuestMemory.anonymous([(0, 2 << 20)])
            try:
                import ctypes
                r = mem.regions[0]
                addr = ctypes.addressof(ctypes.c_char.from_buffer(r.mapping))
                vm.set_user_memory_region(0, 0, r.size, addr)
                boot.write_page_tables_small(mem)
                boot.write_gdt(mem)
                mem.write(0x100000, b"\xcc\xf4")  # int3; hlt
                vcpu = vm.create_vcpu(0)
                vcpu.set_sregs(boot.long_mode_sregs(vcpu.get_sregs()))
                vcpu.set_regs(boot.boot_regs(0x100000))
                reason = vcpu.run()
                if reason == Exit.INTERNAL_ERROR and \
                        vcpu.run_state.exit.internal.suberror == InternalError.EMULATION:
                    result = (True, "KVM emulates guest kernel code here and lacks int3"
                              + (" (kvm_pvm backend)" if pvm else ""))
                elif reason == Exit.SHUTDOWN:
                    result = (False, "hardware virtualization runs guest kernel code natively")
                else:
                    result = (pvm, f"probe ended with exit {reason}; "
                              + ("kvm_pvm loaded: assuming an emulating host" if pvm else "assuming native"))
                vcpu.close()
            finally:
                vm.close()
    except Exception as e:  # the probe must never stop a VM from starting
        result = (pvm, f"probe failed ({e}); " + ("kvm_pvm loaded" if pvm else "assuming native"))
    log.debug("host probe: %s", result)
    return result
