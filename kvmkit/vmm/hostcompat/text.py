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


