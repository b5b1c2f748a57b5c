"""``info registers`` text against what QEMU 7.2 printed for the same CPU state."""

from __future__ import annotations

from kvmkit.monitor.cpu_dump import format_registers

# QEMU 7.2 (qemu-system-x86_64 -M microvm -enable-kvm -S), `info registers` at reset,
# without the DR/FPU/XMM lines kvmkit does not print.
QEMU_RESET_DUMP = """\
EAX=00000000 EBX=00000000 ECX=00000000 EDX=00060fb1
ESI=00000000 EDI=00000000 EBP=00000000 ESP=00000000
EIP=0000fff0 EFL=00000002 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=0
ES =0000 00000000 0000ffff 00009300
CS =f000 ffff0000 0000ffff 00009b00
SS =0000 00000000 0000ffff 00009300
DS =0000 00000000 0000ffff 00009300
FS =0000 00000000 0000ffff 00009300
GS =0000 00000000 0000ffff 00009300
LDT=0000 00000000 0000ffff 00008200
TR =0000 00000000 0000ffff 00008b00
GDT=     00000000 0000ffff
IDT=     00000000 0000ffff
CR0=60000010 CR2=00000000 CR3=00000000 CR4=00000000
EFER=0000000000000000
"""


def segment(name: str, selector: int, base: int, limit: int, type_: int, s: int) -> dict:
    return {name: selector, f"{name}_base": base, f"{name}_limit": limit, f"{name}_type": type_,
            f"{name}_s": s, f"{name}_present": 1, f"{name}_dpl": 0, f"{name}_db": 0,
            f"{name}_l": 0, f"{name}_g": 0, f"{name}_avl": 0}


def test_real_mode_reset_state_matches_qemu():
    regs = {"rdx": 0x60FB1, "rip": 0xFFF0, "rflags": 2, "cr0": 0x60000010,
            "gdt_limit": 0xFFFF, "idt_limit": 0xFFFF}
    for seg in ("es", "ss", "ds", "fs", "gs"):
        regs |= segment(seg, 0, 0, 0xFFFF, 3, 1)
    regs |= segment("cs", 0xF000, 0xFFFF0000, 0xFFFF, 11, 1)
    regs |= segment("ldt", 0, 0, 0xFFFF, 2, 0)
    regs |= segment("tr", 0, 0, 0xFFFF, 11, 0)
    assert format_registers(regs) == QEMU_RESET_DUMP


def test_long_mode_columns_and_descriptors():
    regs = {"rax": 0x1122334455667788, "rip": 0x100016, "rflags": 0x246, "cr0": 0x80000011,
            "cr3": 0x9000, "cr4": 0x20, "efer": 0x500, "gdt_base": 0x500, "gdt_limit": 0x27}
    regs |= segment("cs", 0x10, 0, 0xFFFFFFFF, 11, 1) | {"cs_l": 1, "cs_g": 1}
    regs |= segment("ss", 0x18, 0, 0xFFFFFFFF, 3, 1) | {"ss_db": 1, "ss_g": 1}
    text = format_registers(regs)
    lines = text.splitlines()
    assert lines[0] == ("RAX=1122334455667788 RBX=0000000000000000 "
                        "RCX=0000000000000000 RDX=0000000000000000")
    assert lines[2].startswith("R8 =0000000000000000 R9 =")
    assert lines[4] == ("RIP=0000000000100016 RFL=00000246 [---Z-P-] CPL=0 II=0 A20=1 "
                        "SMM=0 HLT=0")
    assert "CS =0010 0000000000000000 ffffffff 00a09b00 DPL=0 CS64 [-RA]" in lines
    assert "SS =0018 0000000000000000 ffffffff 00c09300 DPL=0 DS   [-WA]" in lines
    assert "GDT=     0000000000000500 00000027" in lines
    assert "CR0=80000011 CR2=0000000000000000 CR3=0000000000009000 CR4=00000020" in lines
    assert lines[-1] == "EFER=0000000000000500"


def test_missing_attributes_still_give_a_64_bit_dump():
    text = format_registers({"rip": 0x100000, "cr0": 0x80000011, "efer": 0x500, "cs": 0x10})
    assert "RIP=0000000000100000" in text
    assert "CS =0010 0000000000000000" in text
