"""Reading guest text: where a guest-virtual address lives in RAM, the
bytes of the instruction a vCPU stopped on, and their decoding (capstone)."""

from __future__ import annotations

import functools

from kvmkit.kvm.vcpu import Vcpu

EMULATION_FLAG_INSTRUCTION_BYTES = 1


def linear_to_physical(vcpu: Vcpu, addr: int, length: int) -> int | None:
    """Guest-physical address of ``length`` bytes at guest-virtual ``addr``
    (None if not mapped or if they cross into another page)."""
    if (addr & 0xFFF) + length > 0x1000:
        return None
    t = vcpu.translate(addr & 0xFFFFFFFFFFFFFFFF)
    return t.physical_address if t.valid else None


def instruction_bytes(vcpu: Vcpu, memory, rip: int) -> bytes:
    """The failing instruction's bytes: from kvm_run when KVM supplies them,
    else read through the guest's page tables."""
    ef = vcpu.run_state.exit.emulation_failure
    if ef.ndata >= 2 and ef.flags & EMULATION_FLAG_INSTRUCTION_BYTES and ef.insn_size:
        return bytes(ef.insn_bytes[: min(ef.insn_size, 15)])
    try:
        t = vcpu.translate(rip)
        if t.valid:
            n = min(15, 0x1000 - (t.physical_address & 0xFFF))
            return memory.read(t.physical_address, n)
    except Exception:
        pass
    return b""


@functools.lru_cache(maxsize=1)
def _decoder():
    """capstone's x86-64 decoder with operand details, built once (None
    without capstone: completions that need operands are then skipped)."""
    try:
        import capstone
    except ImportError:
        return None
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def decode(code: bytes, rip: int):
    """The first instruction in ``code`` (a capstone CsInsn), or None."""
    md = _decoder()
    return next(md.disasm(code, rip), None) if md is not None and code else None


def disassemble(code: bytes, rip: int) -> str:
    if not code:
        return "(instruction bytes unavailable)"
    insn = decode(code, rip)
    return f"{insn.mnemonic} {insn.op_str}".strip() if insn else "(unknown instruction)"




_REG64 = {"ax": "rax", "bx": "rbx", "cx": "rcx", "dx": "rdx", "si": "rsi", "di": "rdi",
          "sp": "rsp", "bp": "rbp"}


def strip_rex(code: bytes) -> bytes:
    i = 0
    while i < len(code) and (code[i] == 0x66 or 0x40 <= code[i] <= 0x4F):
        i += 1
    return code[i:]


def _reg_field(name: str) -> tuple[str, int]:
    """kvm_regs field and operand width in bits for a capstone register name."""
    if name.startswith("r") and name[1:].rstrip("dwb").isdigit():
        base = name.rstrip("dwb") if name[-1] in "dwb" else name
        width = {"d": 32, "w": 16, "b": 8}.get(name[-1], 64) if name != base else 64
        return base, width
    if len(name) == 3 and name[0] in "re":
        return _REG64[name[1:]], 64 if name[0] == "r" else 32
    return _REG64[name], 16


def read_reg(regs, name: str) -> int:
    field, width = _reg_field(name)
    return getattr(regs, field) & ((1 << width) - 1)


def write_reg(regs, name: str, value: int) -> None:
    field, width = _reg_field(name)
    if width == 16:
        value = (getattr(regs, field) & ~0xFFFF) | (value & 0xFFFF)
    setattr(regs, field, value & 0xFFFFFFFFFFFFFFFF)  # 32-bit writes zero-extend


def effective_address(vcpu: Vcpu, regs, insn, mem) -> int:
    from capstone import x86
    addr = mem.disp
    if mem.base == x86.X86_REG_RIP:
        addr += insn.address + insn.size
    elif mem.base:
        addr += read_reg(regs, insn.reg_name(mem.base))
    if mem.index:
        addr += read_reg(regs, insn.reg_name(mem.index)) * mem.scale
    if mem.segment in (x86.X86_REG_FS, x86.X86_REG_GS):
        sregs = vcpu.get_sregs()
        addr += (sregs.fs if mem.segment == x86.X86_REG_FS else sregs.gs).base
    return addr & 0xFFFFFFFFFFFFFFFF
