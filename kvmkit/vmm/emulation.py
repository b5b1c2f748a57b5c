"""Completing, in the VMM, instructions that KVM's emulator lacks.

Only used with host-compat on (see :mod:`kvmkit.vmm.hostcompat`).  Each
completion costs an exit, so the host-compat policy keeps the guest off these
instructions where it can (CPUID bits, ``clearcpuid=``); this is the net for
what it cannot.  Anything else ends the VM with an error naming the bytes,
their disassembly and the guest RIP.
"""

from __future__ import annotations

import logging

from kvmkit.errors import GuestError
from kvmkit.kvm.constants import InternalError
from kvmkit.kvm.vcpu import Vcpu

log = logging.getLogger("kvmkit.emulation")

EMULATION_FLAG_INSTRUCTION_BYTES = 1
RFLAGS_AC = 1 << 18
BP_VECTOR = 3

INT3 = b"\xcc"
FWAIT = b"\x9b"
MF_VECTOR = 16
X86_CR0_NE = 1 << 5
CLAC = b"\x0f\x01\xca"
STAC = b"\x0f\x01\xcb"


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


def disassemble(code: bytes, rip: int) -> str:
    if not code:
        return "(instruction bytes unavailable)"
    try:
        import capstone
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        for insn in md.disasm(code, rip):
            return f"{insn.mnemonic} {insn.op_str}".strip()
    except ImportError:
        pass
    return "(unknown instruction)"


class InstructionCompleter:
    """Handles KVM_EXIT_INTERNAL_ERROR for one machine; counts what it did."""

    def __init__(self, memory, int3: bool, clac_stac: bool) -> None:
        self.memory = memory
        self.int3 = int3
        self.clac_stac = clac_stac
        self.counts: dict[str, int] = {}

    def handle(self, vcpu: Vcpu) -> None:
        """Complete the instruction or raise :class:`GuestError`."""
        internal = vcpu.run_state.exit.internal
        regs = vcpu.get_regs()
        rip = regs.rip
        if internal.suberror != InternalError.EMULATION:
            try:
                name = InternalError(internal.suberror).name
            except ValueError:
                name = str(internal.suberror)
            data = ", ".join(hex(internal.data[i]) for i in range(min(internal.ndata, 16)))
            raise GuestError(f"vCPU {vcpu.id}: KVM internal error {name} at RIP {rip:#x} (data: {data})")
        code = instruction_bytes(vcpu, self.memory, rip)
        if self.int3 and code.startswith(INT3):
            # Advance past int3, then inject #BP as *injected* (not pending):
            # the handler sees the RIP after the int3, as on hardware.
            regs.rip = rip + 1
            vcpu.set_regs(regs)
            self._inject(vcpu, BP_VECTOR)
            self._count("int3")
            return
        if self.int3 and code.startswith(FWAIT):
            # 9b is always an instruction of its own (fstsw = fwait; fnstsw).
            # fwait only waits for pending x87 exceptions: none pending means
            # it is a no-op; an unmasked pending one raises #MF, as on hardware.
            fpu = vcpu.get_fpu()
            pending = fpu.fsw & ~fpu.fcw & 0x3F
            regs.rip = rip + 1
            vcpu.set_regs(regs)
            if pending and vcpu.get_sregs().cr0 & X86_CR0_NE:
                self._inject(vcpu, MF_VECTOR)
            self._count("fwait")
            return
        if self.clac_stac and (code.startswith(CLAC) or code.startswith(STAC)):
            if code.startswith(CLAC):
                regs.rflags &= ~RFLAGS_AC
                self._count("clac")
            else:
                regs.rflags |= RFLAGS_AC
                self._count("stac")
            regs.rip = rip + 3
            vcpu.set_regs(regs)
            return
        raise GuestError(
            f"vCPU {vcpu.id}: KVM cannot emulate the instruction at RIP {rip:#x}: "
            f"bytes {code.hex(' ') or '?'} ({disassemble(code, rip)}). "
            "This host runs guest kernel code in KVM's emulator, which lacks it; "
            "try a kernel that avoids it or report it with this line")

    @staticmethod
    def _inject(vcpu: Vcpu, vector: int) -> None:
        ev = vcpu.get_vcpu_events()
        ev.exception.injected = 1
        ev.exception.nr = vector
        ev.exception.has_error_code = 0
        ev.exception.pending = 0
        ev.flags = 0
        vcpu.set_vcpu_events(ev)

    def _count(self, what: str) -> None:
        n = self.counts.get(what, 0) + 1
        self.counts[what] = n
        if n == 1:
            log.info("completing %s in the VMM (emulator gap)", what)
