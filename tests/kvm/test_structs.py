"""The ctypes mirrors must match the kernel headers byte for byte: compile a C
program against the installed <linux/kvm.h> and compare sizes, offsets and
ioctl numbers."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest

from kvmkit.kvm import ioctls as I
from kvmkit.kvm import structs as S

STRUCTS = ["kvm_userspace_memory_region", "kvm_regs", "kvm_segment", "kvm_dtable", "kvm_sregs",
           "kvm_fpu", "kvm_cpuid_entry2", "kvm_msr_entry", "kvm_lapic_state", "kvm_irqchip",
           "kvm_pit_config", "kvm_pit_channel_state", "kvm_pit_state2", "kvm_irq_level",
           "kvm_irqfd", "kvm_ioeventfd", "kvm_msi", "kvm_irq_routing_entry", "kvm_clock_data",
           "kvm_vcpu_events", "kvm_mp_state", "kvm_translation", "kvm_enable_cap", "kvm_dirty_log",
           "kvm_coalesced_mmio_zone", "kvm_coalesced_mmio", "kvm_xsave", "kvm_xcrs",
           "kvm_debugregs", "kvm_guest_debug", "kvm_run"]
OFFSETS = [("kvm_run", "exit_reason"), ("kvm_run", "kvm_valid_regs"), ("kvm_sregs", "cr0"),
           ("kvm_sregs", "interrupt_bitmap"), ("kvm_vcpu_events", "exception_payload"),
           ("kvm_vcpu_events", "sipi_vector"), ("kvm_fpu", "xmm"), ("kvm_clock_data", "realtime")]
IOCTLS = ["KVM_RUN", "KVM_GET_REGS", "KVM_SET_SREGS", "KVM_SET_USER_MEMORY_REGION", "KVM_CREATE_PIT2",
          "KVM_IRQFD", "KVM_IOEVENTFD", "KVM_SIGNAL_MSI", "KVM_SET_GSI_ROUTING", "KVM_GET_CLOCK",
          "KVM_SET_CLOCK", "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS", "KVM_GET_XSAVE",
          "KVM_SET_XCRS", "KVM_GET_PIT2", "KVM_SET_PIT2", "KVM_GET_IRQCHIP", "KVM_SET_IRQCHIP",
          "KVM_GET_SUPPORTED_CPUID", "KVM_SET_CPUID2", "KVM_GET_MSRS", "KVM_SET_MSRS",
          "KVM_GET_DIRTY_LOG", "KVM_TRANSLATE", "KVM_GET_LAPIC", "KVM_SET_TSS_ADDR",
          "KVM_SET_IDENTITY_MAP_ADDR", "KVM_REGISTER_COALESCED_MMIO", "KVM_ENABLE_CAP",
          "KVM_GET_MP_STATE", "KVM_KVMCLOCK_CTRL", "KVM_GET_MSR_INDEX_LIST", "KVM_GET_FPU"]


@pytest.fixture(scope="module")
def kernel_values(tmp_path_factory) -> dict[str, int]:
    if shutil.which("gcc") is None:
        pytest.skip("gcc not installed")
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <linux/kvm.h>', 'int main(void){']
    for s in STRUCTS:
        lines.append(f'printf("sizeof {s} %zu\\n", sizeof(struct {s}));')
    for s, f in OFFSETS:
        lines.append(f'printf("offsetof {s}.{f} %zu\\n", offsetof(struct {s}, {f}));')
    for name in IOCTLS:
        lines.append(f'printf("ioctl {name} %lu\\n", (unsigned long){name});')
    lines.append("return 0;}")
    d = tmp_path_factory.mktemp("kvmh")
    (d / "probe.c").write_text("\n".join(lines))
    subprocess.run(["gcc", "-o", str(d / "probe"), str(d / "probe.c")], check=True)
    out = subprocess.run([str(d / "probe")], check=True, capture_output=True, text=True).stdout
    return {" ".join(line.split()[:2]): int(line.split()[2]) for line in out.splitlines()}


@pytest.mark.parametrize("name", STRUCTS)
def test_struct_size_matches_kernel(kernel_values, name):
    assert ctypes.sizeof(getattr(S, name)) == kernel_values[f"sizeof {name}"]


@pytest.mark.parametrize("struct,field", OFFSETS)
def test_field_offset_matches_kernel(kernel_values, struct, field):
    assert getattr(getattr(S, struct), field).offset == kernel_values[f"offsetof {struct}.{field}"]


@pytest.mark.parametrize("name", IOCTLS)
def test_ioctl_number_matches_kernel(kernel_values, name):
    assert getattr(I, name) == kernel_values[f"ioctl {name}"], name


def test_variable_length_structs_have_kernel_header_sizes():
    assert ctypes.sizeof(S.kvm_cpuid2(0)) == 8
    assert ctypes.sizeof(S.kvm_cpuid2(3)) == 8 + 3 * 40
    assert ctypes.sizeof(S.kvm_msrs(2)) == 8 + 2 * 16
    assert ctypes.sizeof(S.kvm_irq_routing(1)) == 8 + 48
