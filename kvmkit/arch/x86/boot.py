"""Put a vCPU where Linux's 64-bit boot protocol wants it: long mode,
identity-mapped page tables, a flat GDT, ``rsi`` = the zero page.

The same state starts our tiny test guests, which are ELF files linked at
physical addresses.
"""

from __future__ import annotations

import struct

from kvmkit.arch.x86.layout import (BOOT_STACK_TOP, GDT_ADDR, IDT_ADDR, PD_ADDR, PDPT_ADDR,
                                    PML4_ADDR, ZERO_PAGE_ADDR)
from kvmkit.kvm.structs import kvm_regs, kvm_segment, kvm_sregs

X86_CR0_PE = 1 << 0
X86_CR0_ET = 1 << 4
X86_CR0_NE = 1 << 5
X86_CR0_WP = 1 << 16
X86_CR0_PG = 1 << 31
X86_CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10

BOOT_CS = 0x10   # Linux's __BOOT_CS
BOOT_DS = 0x18   # Linux's __BOOT_DS
BOOT_TSS = 0x20

GDT = (
    0x0000000000000000,   # null
    0x0000000000000000,   # unused (Linux leaves 0x08 empty at boot)
    0x00AF9B000000FFFF,   # 0x10: 64-bit code, DPL0
    0x00CF93000000FFFF,   # 0x18: data, DPL0
    0x008F8B000000FFFF,   # 0x20: TSS (busy), for KVM's state checks
)


def write_page_tables(memory) -> None:
    """Identity-map the first 4 GiB with 2 MiB pages."""
    memory.write(PML4_ADDR, struct.pack("<Q", PDPT_ADDR | 0x3) + bytes(4088))
    memory.write(PDPT_ADDR, b"".join(struct.pack("<Q", (PD_ADDR + i * 0x1000) | 0x3) for i in range(4))
                 + bytes(4096 - 32))
    pd = b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(4 * 512))
    memory.write(PD_ADDR, pd)


def write_page_tables_small(memory) -> None:
    """Identity-map only the first 1 GiB (for probes with little memory)."""
    memory.write(PML4_ADDR, struct.pack("<Q", PDPT_ADDR | 0x3) + bytes(4088))
    memory.write(PDPT_ADDR, struct.pack("<Q", PD_ADDR | 0x3) + bytes(4088))
    memory.write(PD_ADDR, b"".join(struct.pack("<Q", (i << 21) | 0x83) for i in range(512)))


def write_gdt(memory) -> None:
    memory.write(GDT_ADDR, b"".join(struct.pack("<Q", d) for d in GDT))
    memory.write(IDT_ADDR, bytes(8))


def _segment(selector: int, descriptor: int) -> kvm_segment:
    s = kvm_segment()
    s.selector = selector
    s.base = ((descriptor >> 16) & 0xFFFFFF) | ((descriptor >> 56) & 0xFF) << 24
    limit = (descriptor & 0xFFFF) | ((descriptor >> 48) & 0xF) << 16
    s.g = (descriptor >> 55) & 1
    s.limit = (limit << 12) | 0xFFF if s.g else limit
    s.type = (descriptor >> 40) & 0xF
    s.s = (descriptor >> 44) & 1
    s.dpl = (descriptor >> 45) & 3
    s.present = (descriptor >> 47) & 1
    s.avl = (descriptor >> 52) & 1
    s.l = (descriptor >> 53) & 1
    s.db = (descriptor >> 54) & 1
    return s


def long_mode_sregs(sregs: kvm_sregs) -> kvm_sregs:
    """Fill ``sregs`` (as read from the vCPU) with 64-bit boot state."""
    code = _segment(BOOT_CS, GDT[2])
    data = _segment(BOOT_DS, GDT[3])
    tss = _segment(BOOT_TSS, GDT[4])
    sregs.cs = code
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = data
    sregs.tr = tss
    sregs.gdt.base, sregs.gdt.limit = GDT_ADDR, len(GDT) * 8 - 1
    sregs.idt.base, sregs.idt.limit = IDT_ADDR, 7
    sregs.cr0 = X86_CR0_PE | X86_CR0_PG | X86_CR0_ET | X86_CR0_NE
    sregs.cr3 = PML4_ADDR
    sregs.cr4 = X86_CR4_PAE
    sregs.efer = EFER_LME | EFER_LMA
    return sregs


def boot_regs(entry: int, zero_page: int = ZERO_PAGE_ADDR) -> kvm_regs:
    regs = kvm_regs()
    regs.rip = entry
    regs.rsi = zero_page
    regs.rsp = regs.rbp = BOOT_STACK_TOP
    regs.rflags = 0x2
    return regs
