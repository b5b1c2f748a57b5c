"""Host compatibility: the probe tells an emulating host from a VT-x/SVM one,
and the policy changes nothing when it is off."""

from __future__ import annotations

import os

import pytest

from kvmkit.arch.x86.cpuid import CX16, CpuidPolicy, build_cpuid, feature
from kvmkit.kvm import Kvm
from kvmkit.vmm import hostcompat


def test_off_changes_nothing():
    hc = hostcompat.resolve("off")
    assert not hc.enabled and not hc.hide_cpuid and not hc.cmdline_extra
    assert not hc.complete_int3 and not hc.complete_clac_stac


def test_on_states_every_workaround():
    hc = hostcompat.resolve("on")
    assert hc.enabled and CX16 in hc.hide_cpuid
    clear = next(a for a in hc.cmdline_extra if a.startswith("clearcpuid="))
    # XSAVE stays (completed in the VMM) but only its standard form, and no AVX
    assert "noxsave" not in hc.cmdline_extra
    for feature in ("avx", "avx2", "xsaveopt", "xsavec", "xsaves", "pku"):
        assert feature in clear.removeprefix("clearcpuid=").split(",")
    text = hc.describe()
    for word in ("cx16", "kvm-pv-send-ipi", "xsave", "xrstor", "int3", "fwait", "lsl", "clac"):
        assert word in text


@pytest.mark.kvm
def test_probe_agrees_with_the_host():
    emulating, why = hostcompat.probe()
    assert why
    if os.path.isdir("/sys/module/kvm_pvm"):
        assert emulating, why
    assert hostcompat.resolve("auto").enabled == emulating


@pytest.mark.kvm
def test_policy_hides_pv_hypercall_features_from_the_vcpu_table():
    with Kvm() as kvm:
        supported = kvm.supported_cpuid()
    hc = hostcompat.resolve("on")
    table = build_cpuid(supported, CpuidPolicy(hide=hc.hide_cpuid), 0, 2)
    assert not feature(table, *CX16)
    for leaf, reg, bit in hostcompat.KVM_PV_HYPERCALL_FEATURES:
        assert not feature(table, leaf, reg, bit)
    assert feature(table, 0x40000001, "eax", 3) == feature(supported, 0x40000001, "eax", 3)  # kvmclock stays
