"""``Kvm``: the /dev/kvm system file descriptor."""

from __future__ import annotations

import errno
import os

from kvmkit.errors import KvmUnavailableError
from kvmkit.kvm import ioctls as I
from kvmkit.kvm import structs as S
from kvmkit.kvm.constants import Cap
from kvmkit.kvm.fd import KvmFd, KvmIoctlError

KVM_API_VERSION = 12
KVM_DEVICE = "/dev/kvm"


class Kvm(KvmFd):
    """Open /dev/kvm, check the API version, answer capability queries."""

    def __init__(self, path: str = KVM_DEVICE) -> None:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailableError(
                f"{path} does not exist: load the kvm module (modprobe kvm-intel or kvm-amd) "
                "or enable virtualization in the firmware") from None
        except PermissionError:
            raise KvmUnavailableError(
                f"{path}: permission denied: run as root or add your user to the 'kvm' group") from None
        except OSError as e:
            raise KvmUnavailableError(f"{path}: {os.strerror(e.errno)}") from None
        super().__init__(fd)
        version = self.ioctl(I.KVM_GET_API_VERSION)
        if version != KVM_API_VERSION:
            self.close()
            raise KvmUnavailableError(f"{path}: KVM API version {version}, expected {KVM_API_VERSION}")

    def check_extension(self, cap: int) -> int:
        return self.ioctl(I.KVM_CHECK_EXTENSION, int(cap))

    def vcpu_mmap_size(self) -> int:
        return self.ioctl(I.KVM_GET_VCPU_MMAP_SIZE)

    def max_vcpus(self) -> int:
        """The most vCPUs one VM may have (KVM_CAP_MAX_VCPUS, else NR_VCPUS, else 4)."""
        return self.check_extension(Cap.MAX_VCPUS) or self.check_extension(Cap.NR_VCPUS) or 4

    def _query_growing(self, request: int, make, count_field: str, start: int, limit: int):
        """Issue a query whose buffer size the caller must guess: grow it
        while the kernel answers E2BIG."""
        n = start
        while True:
            buf = make(n)()
            setattr(buf, count_field, n)
            try:
                self.ioctl(request, buf)
            except KvmIoctlError as e:
                if e.errno == errno.E2BIG and n < limit:
                    n *= 4
                    continue
                raise
            return buf

    def supported_cpuid(self) -> list[S.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID."""
        buf = self._query_growing(I.KVM_GET_SUPPORTED_CPUID, S.kvm_cpuid2, "nent", 64, 4096)
        return [S.kvm_cpuid_entry2.from_buffer_copy(buf.entries[i]) for i in range(buf.nent)]

    def msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores."""
        buf = self._query_growing(I.KVM_GET_MSR_INDEX_LIST, S.kvm_msr_list, "nmsrs", 256, 65536)
        return list(buf.indices[: buf.nmsrs])

    def create_vm(self) -> "Vm":
        from kvmkit.kvm.vm import Vm
        return Vm(self, self.ioctl(I.KVM_CREATE_VM, 0))
