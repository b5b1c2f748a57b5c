"""``Vcpu``: one virtual CPU file descriptor and its shared ``kvm_run`` page."""

from __future__ import annotations

import ctypes as C
import errno
import fcntl
import mmap

from kvmkit.kvm import constants as K
from kvmkit.kvm import ioctls as I
from kvmkit.kvm import structs as S
from kvmkit.kvm.fd import KvmFd, KvmIoctlError



class Vcpu(KvmFd):
    """Registers, MSRs, CPUID, LAPIC and events of one vCPU, and ``run``.

    ``run()`` returns the exit reason; the details are read from
    ``self.run_state`` (a ``kvm_run`` overlaid on the shared page) and, for
    port I/O, from ``self.page`` at ``io.data_offset``.
    """

    def __init__(self, vm, vcpu_id: int, fd: int) -> None:
        super().__init__(fd)
        self.vm = vm
        self.id = vcpu_id
        size = vm.kvm.vcpu_mmap_size()
        self.page = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_state = S.kvm_run.from_buffer(self.page)
        self._fd = fd

    def run(self) -> int:
        """KVM_RUN once.  Returns the exit reason, or ``Exit.INTR`` when a
        signal (a kick) interrupted the run."""
        try:
            fcntl.ioctl(self._fd, I.KVM_RUN, 0)
        except OSError as e:
            if e.errno in (errno.EINTR, errno.EAGAIN):
                return K.Exit.INTR
            raise KvmIoctlError(I.KVM_RUN, e.errno) from None
        return self.run_state.exit_reason

    def io_data(self) -> memoryview:
        io = self.run_state.exit.io
        off = io.data_offset
        return memoryview(self.page)[off: off + io.size * io.count]

    def coalesced_ring(self) -> memoryview:
        """The VM's coalesced-MMIO/PIO ring (one per VM, mapped in every vCPU's page set)."""
        base = K.COALESCED_MMIO_PAGE_OFFSET * mmap.PAGESIZE
        return memoryview(self.page)[base: base + mmap.PAGESIZE]

    def _get(self, request: int, typ):
        obj = typ()
        self.ioctl(request, obj)
        return obj

    def get_regs(self) -> S.kvm_regs:
        return self._get(I.KVM_GET_REGS, S.kvm_regs)

    def set_regs(self, regs: S.kvm_regs) -> None:
        self.ioctl(I.KVM_SET_REGS, regs)

    def get_sregs(self) -> S.kvm_sregs:
        return self._get(I.KVM_GET_SREGS, S.kvm_sregs)

    def set_sregs(self, sregs: S.kvm_sregs) -> None:
        self.ioctl(I.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> S.kvm_fpu:
        return self._get(I.KVM_GET_FPU, S.kvm_fpu)

    def set_fpu(self, fpu: S.kvm_fpu) -> None:
        self.ioctl(I.KVM_SET_FPU, fpu)

    def get_lapic(self) -> S.kvm_lapic_state:
        return self._get(I.KVM_GET_LAPIC, S.kvm_lapic_state)

    def set_lapic(self, lapic: S.kvm_lapic_state) -> None:
        self.ioctl(I.KVM_SET_LAPIC, lapic)

    def get_mp_state(self) -> int:
        return self._get(I.KVM_GET_MP_STATE, S.kvm_mp_state).mp_state

    def set_mp_state(self, state: int) -> None:
        self.ioctl(I.KVM_SET_MP_STATE, S.kvm_mp_state(state))

    def get_vcpu_events(self) -> S.kvm_vcpu_events:
        return self._get(I.KVM_GET_VCPU_EVENTS, S.kvm_vcpu_events)

    def set_vcpu_events(self, events: S.kvm_vcpu_events) -> None:
        self.ioctl(I.KVM_SET_VCPU_EVENTS, events)

    def get_xsave(self) -> S.kvm_xsave:
        return self._get(I.KVM_GET_XSAVE, S.kvm_xsave)

    def set_xsave(self, xsave: S.kvm_xsave) -> None:
        self.ioctl(I.KVM_SET_XSAVE, xsave)

    def get_xcrs(self) -> S.kvm_xcrs:
        return self._get(I.KVM_GET_XCRS, S.kvm_xcrs)

    def set_xcrs(self, xcrs: S.kvm_xcrs) -> None:
        self.ioctl(I.KVM_SET_XCRS, xcrs)

    def get_debugregs(self) -> S.kvm_debugregs:
        return self._get(I.KVM_GET_DEBUGREGS, S.kvm_debugregs)

    def set_debugregs(self, dregs: S.kvm_debugregs) -> None:
        self.ioctl(I.KVM_SET_DEBUGREGS, dregs)

    def set_cpuid2(self, entries: list[S.kvm_cpuid_entry2]) -> None:
        buf = S.kvm_cpuid2(len(entries))()
        buf.nent = len(entries)
        for i, e in enumerate(entries):
            buf.entries[i] = e
        self.ioctl(I.KVM_SET_CPUID2, buf)

    def get_cpuid2(self, max_entries: int = 256) -> list[S.kvm_cpuid_entry2]:
        buf = S.kvm_cpuid2(max_entries)()
        buf.nent = max_entries
        self.ioctl(I.KVM_GET_CPUID2, buf)
        return [S.kvm_cpuid_entry2.from_buffer_copy(buf.entries[i]) for i in range(buf.nent)]

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        buf = S.kvm_msrs(len(indices))()
        buf.nmsrs = len(indices)
        for i, idx in enumerate(indices):
            buf.entries[i].index = idx
        n = self.ioctl(I.KVM_GET_MSRS, buf)
        return {buf.entries[i].index: buf.entries[i].data for i in range(n)}

    def set_msrs(self, values: dict[int, int]) -> int:
        """Set MSRs; returns how many the kernel accepted (it stops at the first refused)."""
        buf = S.kvm_msrs(len(values))()
        buf.nmsrs = len(values)
        for i, (idx, val) in enumerate(values.items()):
            buf.entries[i].index = idx
            buf.entries[i].data = val
        return self.ioctl(I.KVM_SET_MSRS, buf)

    def translate(self, linear_address: int) -> S.kvm_translation:
        t = S.kvm_translation()
        t.linear_address = linear_address
        self.ioctl(I.KVM_TRANSLATE, t)
        return t

    def set_guest_debug(self, control: int) -> None:
        self.ioctl(I.KVM_SET_GUEST_DEBUG, S.kvm_guest_debug(control))

    def kvmclock_ctrl(self) -> None:
        self.ioctl(I.KVM_KVMCLOCK_CTRL)

    def get_tsc_khz(self) -> int:
        return self.ioctl(I.KVM_GET_TSC_KHZ)

    def close(self) -> None:
        try:
            del self.run_state
            self.page.close()
        except (AttributeError, BufferError):
            pass
        super().close()
