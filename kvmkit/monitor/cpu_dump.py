"""``info registers`` text for an x86 vCPU, laid out as QEMU prints it.

People paste this output into bug reports and compare it with QEMU's, and
some scripts scrape it (``RIP=...``), so the layout follows QEMU's
``x86_cpu_dump_state`` (target/i386/cpu-dump.c): 64-bit columns when the CPU
runs 64-bit code, 32-bit ones otherwise.

Input is :meth:`VmControl.cpu_registers`' flat dict.  Names follow
``struct kvm_regs``/``kvm_sregs``: ``rax``..``r15``, ``rip``, ``rflags``,
``cr0``/``cr2``/``cr3``/``cr4``, ``efer``, ``gdt_base``/``gdt_limit``,
``idt_base``/``idt_limit``; each segment (``es cs ss ds fs gs ldt tr``) as
``cs`` or ``cs_selector``, ``cs_base``, ``cs_limit`` and either the
``kvm_segment`` attribute bits (``cs_type``, ``cs_s``, ``cs_dpl``,
``cs_present``, ``cs_avl``, ``cs_l``, ``cs_db``, ``cs_g``) or QEMU's packed
``cs_flags``.  Missing names print as zero rather than failing: a partial
dump is still useful.
"""

from __future__ import annotations

from typing import Mapping

SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")
_EFER_LMA = 1 << 10
_CR0_PE = 1
_GPRS64 = (("RAX", "rax"), ("RBX", "rbx"), ("RCX", "rcx"), ("RDX", "rdx"),
           ("RSI", "rsi"), ("RDI", "rdi"), ("RBP", "rbp"), ("RSP", "rsp"),
           ("R8 ", "r8"), ("R9 ", "r9"), ("R10", "r10"), ("R11", "r11"),
           ("R12", "r12"), ("R13", "r13"), ("R14", "r14"), ("R15", "r15"))
# RFLAGS bits QEMU spells out, in its order: D O S Z A P C
_FLAG_LETTERS = ((0x400, "D"), (0x800, "O"), (0x80, "S"), (0x40, "Z"),
                 (0x10, "A"), (0x4, "P"), (0x1, "C"))
_SYS_TYPES_32 = ("Reserved", "TSS16-avl", "LDT", "TSS16-busy", "CallGate16", "TaskGate",
                 "IntGate16", "TrapGate16", "Reserved", "TSS32-avl", "Reserved",
                 "TSS32-busy", "CallGate32", "Reserved", "IntGate32", "TrapGate32")
_SYS_TYPES_64 = ("<hiword>", "Reserved", "LDT", "Reserved", "Reserved", "Reserved",
                 "Reserved", "Reserved", "Reserved", "TSS64-avl", "Reserved",
                 "TSS64-busy", "CallGate64", "Reserved", "IntGate64", "TrapGate64")


def segment_flags(regs: Mapping[str, int], seg: str) -> int:
    """QEMU's descriptor-flags word for a segment (type at bit 8 ... G at 23)."""
    if f"{seg}_flags" in regs:
        return regs[f"{seg}_flags"]

    def bit(name: str) -> int:
        return regs.get(f"{seg}_{name}", 0)

    return ((bit("type") & 0xF) << 8 | (bit("s") & 1) << 12 | (bit("dpl") & 3) << 13
            | (bit("present") & 1) << 15 | (bit("avl") & 1) << 20 | (bit("l") & 1) << 21
            | (bit("db") & 1) << 22 | (bit("g") & 1) << 23)


def _selector(regs: Mapping[str, int], seg: str) -> int:
    return regs.get(f"{seg}_selector", regs.get(seg, 0))


def _describe(flags: int, protected: bool, long_mode: bool) -> str:
    """The ``DPL=0 CS64 [-RA]`` suffix QEMU adds for present segments."""
    if not protected or not flags & (1 << 15):
        return ""
    text = f" DPL={(flags >> 13) & 3} "
    if flags & (1 << 12):                       # code or data
        if flags & (1 << 11):                   # code
            kind = "CS64" if flags & (1 << 21) else ("CS32" if flags & (1 << 22) else "CS16")
            text += f"{kind} [{'C' if flags & (1 << 10) else '-'}{'R' if flags & (1 << 9) else '-'}"
        else:
            kind = "DS  " if flags & (1 << 22) or long_mode else "DS16"
            text += f"{kind} [{'E' if flags & (1 << 10) else '-'}{'W' if flags & (1 << 9) else '-'}"
        return text + ("A]" if flags & (1 << 8) else "-]")
    names = _SYS_TYPES_64 if long_mode else _SYS_TYPES_32
    return text + names[(flags >> 8) & 0xF]


def format_registers(regs: Mapping[str, int], halted: bool = False) -> str:
    """The register block of ``info registers`` (without the ``CPU#n`` header)."""
    r = regs.get
    long_mode = bool(r("efer", 0) & _EFER_LMA)
    protected = bool(r("cr0", 0) & _CR0_PE)
    cs_flags = segment_flags(regs, "cs")
    # Without CS attributes, assume a long-mode CPU runs 64-bit code (a kernel does).
    known = any(k.startswith("cs_") and k not in ("cs_base", "cs_limit", "cs_selector")
                for k in regs)
    code64 = long_mode and (bool(cs_flags & (1 << 21)) or not known)
    eflags = r("rflags", 0)
    flag_text = "".join(ch if eflags & mask else "-" for mask, ch in _FLAG_LETTERS)
    cpl = _selector(regs, "cs") & 3 if protected else 0
    lines = []
    if code64:
        for i in range(0, 16, 4):
            lines.append(" ".join(f"{label}={r(key, 0):016x}" for label, key in _GPRS64[i:i + 4]))
        lines.append(f"RIP={r('rip', 0):016x} RFL={eflags:08x} [{flag_text}] CPL={cpl} "
                     f"II=0 A20=1 SMM=0 HLT={int(halted)}")
    else:
        names32 = [(label.replace("R", "E", 1), key) for label, key in _GPRS64[:8]]
        for i in range(0, 8, 4):
            lines.append(" ".join(f"{label}={r(key, 0) & 0xFFFFFFFF:08x}"
                                  for label, key in names32[i:i + 4]))
        lines.append(f"EIP={r('rip', 0) & 0xFFFFFFFF:08x} EFL={eflags:08x} [{flag_text}] "
                     f"CPL={cpl} II=0 A20=1 SMM=0 HLT={int(halted)}")
    for seg in SEGMENTS + ("ldt", "tr"):
        flags = segment_flags(regs, seg)
        base = r(f"{seg}_base", 0)
        base_text = f"{base:016x}" if code64 else f"{base & 0xFFFFFFFF:08x}"
        lines.append(f"{seg.upper():<3}={_selector(regs, seg):04x} {base_text} "
                     f"{r(f'{seg}_limit', 0):08x} {flags & 0x00FFFF00:08x}"
                     + _describe(flags, protected, long_mode))
    wide = "016x" if long_mode else "08x"
    for table in ("gdt", "idt"):
        lines.append(f"{table.upper()}=     {r(f'{table}_base', 0):{wide}} {r(f'{table}_limit', 0):08x}")
    lines.append(f"CR0={r('cr0', 0):08x} CR2={r('cr2', 0):{wide}} CR3={r('cr3', 0):{wide}} "
                 f"CR4={r('cr4', 0):08x}")
    lines.append(f"EFER={r('efer', 0):016x}")
    return "\n".join(lines) + "\n"
