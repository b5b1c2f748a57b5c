"""The bindings against the real /dev/kvm."""

from __future__ import annotations

import pytest

from kvmkit.errors import KvmUnavailableError
from kvmkit.kvm import Cap, Kvm, KvmIoctlError

pytestmark = pytest.mark.kvm


def test_api_version_and_capabilities():
    with Kvm() as kvm:
        assert kvm.check_extension(Cap.IRQCHIP)
        assert kvm.check_extension(Cap.USER_MEMORY)
        assert kvm.max_vcpus() >= 1
        assert kvm.vcpu_mmap_size() >= 4096


def test_supported_cpuid_has_basic_leaves():
    with Kvm() as kvm:
        leaves = {e.function for e in kvm.supported_cpuid()}
    assert {0, 1, 0x80000000}.issubset(leaves)
    assert 0x40000000 in leaves  # KVM paravirt signature leaf


def test_missing_device_gives_actionable_error(tmp_path):
    with pytest.raises(KvmUnavailableError, match="does not exist"):
        Kvm(str(tmp_path / "kvm"))


def test_not_permitted_device_gives_actionable_error(tmp_path):
    p = tmp_path / "kvm"
    p.write_text("")
    p.chmod(0)
    import os
    if os.geteuid() == 0:
        # root ignores mode bits: use a directory, which open() refuses for O_RDWR
        p.unlink()
        p.mkdir()
        with pytest.raises(KvmUnavailableError):
            Kvm(str(p))
    else:
        with pytest.raises(KvmUnavailableError, match="permission denied"):
            Kvm(str(p))


def test_ioctl_error_names_the_request():
    with Kvm() as kvm:
        vm = kvm.create_vm()
        with pytest.raises(KvmIoctlError, match="KVM_SET_USER_MEMORY_REGION"):
            vm.set_user_memory_region(0, 0x1000, 0x1001, 0)  # unaligned size
        vm.close()
