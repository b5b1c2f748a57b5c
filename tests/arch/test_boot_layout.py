"""Boot-protocol layout: zero page offsets, e820, MP table, CPUID policy."""

from __future__ import annotations

import struct

from kvmkit.arch.x86 import bootparams as bp
from kvmkit.arch.x86.cpuid import CX16, CpuidPolicy, build_cpuid, feature
from kvmkit.arch.x86.layout import MMIO_HOLE_END, MMIO_HOLE_START, ram_layout
from kvmkit.arch.x86.mptable import build_mptable
from kvmkit.kvm.structs import kvm_cpuid_entry2


def test_zero_page_for_vmlinux_has_minimal_header():
    zp = bp.ZeroPage()
    b = zp.bytes()
    assert struct.unpack_from("<H", b, 0x1FE)[0] == 0xAA55
    assert b[0x202:0x206] == b"HdrS"
    assert b[0x210] == 0xFF
    assert b[0x211] & bp.LOADED_HIGH


def test_zero_page_cmdline_initrd_and_e820_offsets():
    zp = bp.ZeroPage()
    zp.set_cmdline(0x20000, 42)
    zp.set_initrd(0x1_2345_6000, 0x1234)
    zp.set_e820([bp.E820Entry(0, 0x9FC00, bp.E820_RAM), bp.E820Entry(0x100000, 0x7F00000, bp.E820_RAM)])
    b = zp.bytes()
    assert struct.unpack_from("<I", b, 0x228)[0] == 0x20000
    assert struct.unpack_from("<I", b, 0x238)[0] == 42
    assert struct.unpack_from("<I", b, 0x218)[0] == 0x2345_6000
    assert struct.unpack_from("<I", b, 0x0C0)[0] == 0x1     # ext_ramdisk_image: high bits
    assert struct.unpack_from("<I", b, 0x21C)[0] == 0x1234
    assert b[0x1E8] == 2
    assert struct.unpack_from("<QQI", b, 0x2D0 + 20) == (0x100000, 0x7F00000, 1)


def test_bzimage_setup_header_is_copied_verbatim():
    hdr = bytes(i & 0xFF for i in range(0x1F1, 0x1F1 + 0x77))
    zp = bp.ZeroPage(hdr)
    assert zp.bytes()[0x1F1:0x1F1 + 0x10] == hdr[:0x10]


def test_ram_layout_splits_around_the_mmio_hole():
    assert ram_layout(512 << 20) == [(0, 512 << 20)]
    big = ram_layout(4 << 30)
    assert big[0] == (0, MMIO_HOLE_START)
    assert big[1] == (MMIO_HOLE_END, (4 << 30) - MMIO_HOLE_START)


def test_mptable_checksums_and_cpu_entries():
    t = build_mptable(3)
    fp, table = t[:16], t[16:]
    assert fp[:4] == b"_MP_" and sum(fp) & 0xFF == 0
    length, = struct.unpack_from("<H", table, 4)
    assert table[:4] == b"PCMP" and sum(table[:length]) & 0xFF == 0
    count, = struct.unpack_from("<H", table, 34)
    cpus = []
    off = 44
    for _ in range(count):
        kind = table[off]
        if kind == 0:
            cpus.append((table[off + 1], table[off + 3]))
            off += 20
        else:
            off += 8
    assert cpus == [(0, 3), (1, 1), (2, 1)]  # BSP flag only on CPU 0


def _entry(function, index=0, **regs):
    e = kvm_cpuid_entry2()
    e.function, e.index = function, index
    for k, v in regs.items():
        setattr(e, k, v)
    return e


def test_cpuid_policy_topology_hypervisor_and_hiding():
    supported = [_entry(1, ecx=(1 << 13) | (1 << 0), ebx=0xFFFF), _entry(0x40000000, eax=0x40000001)]
    t = build_cpuid(supported, CpuidPolicy(hide=(CX16,)), vcpu_id=2, nr_vcpus=4)
    leaf1 = t[0]
    assert leaf1.ebx >> 24 == 2 and (leaf1.ebx >> 16) & 0xFF == 4
    assert not feature(t, *CX16)
    assert feature(t, 1, "ecx", 31)  # hypervisor present
    assert feature(t, 1, "ecx", 0)   # untouched bits stay
    sig = b"".join(getattr(t[1], r).to_bytes(4, "little") for r in ("ebx", "ecx", "edx"))
    assert sig == b"KVMKVMKVM\0\0\0"
    # the input table is not modified
    assert supported[0].ecx & (1 << 13)
