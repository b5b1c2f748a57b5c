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
from kvmkit.vmm.hostcompat.xsave import GuestFault, XsaveCompleter
from kvmkit.vmm.hostcompat.text import (decode, disassemble, effective_address, instruction_bytes,
                                        linear_to_physical, read_reg, strip_rex, write_reg)

log = logging.getLogger("kvmkit.emulation")

RFLAGS_AC = 1 << 18
BP_VECTOR = 3

INT3 = b"\xcc"
FWAIT = b"\x9b"
MF_VECTOR = 16
X86_CR0_NE = 1 << 5
LSL = b"\x0f\x03"
MXCSR_OPS = {2: "ldmxcsr", 3: "stmxcsr"}   # 0f ae /2, /3
XSAVE_OPS = {4: "xsave", 5: "xrstor"}      # 0f ae /4, /5 (memory forms)
MXCSR_DEFAULT = 0x1F80
XSTATE_BV_DWORD = 512 // 4                 # XSAVE header: which components the area holds
XFEATURE_SSE, XFEATURE_YMM = 1 << 1, 1 << 2
CLAC = b"\x0f\x01\xca"
STAC = b"\x0f\x01\xcb"


class InstructionCompleter:
    """Handles KVM_EXIT_INTERNAL_ERROR for one machine; counts what it did."""

    def __init__(self, memory, int3: bool, clac_stac: bool, syscall_trap=None) -> None:
        self.memory = memory
        self.int3 = int3
        self.clac_stac = clac_stac
        self.trap = syscall_trap
        self.xsave = XsaveCompleter(memory)
        self.counts: dict[str, int] = {}

    def handle(self, vcpu: Vcpu) -> None:
        """Complete the instruction or raise :class:`GuestError`."""
        internal = vcpu.run_state.exit.internal
        regs = vcpu.get_regs()
        rip = regs.rip
        trap = self.trap
        if trap is not None and rip == trap.handler:
            trap.handle(vcpu, regs)          # a page fault reached the planted #PF handler
            return
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
        if self.int3 and strip_rex(code).startswith(LSL) and self._complete_lsl(vcpu, regs, code, rip):
            self._count("lsl")
            return
        body = strip_rex(code)
        if self.int3 and body[:2] == b"\x0f\xae" and len(body) > 2 and (body[2] >> 3 & 7) in XSAVE_OPS \
                and body[2] >> 6 != 3 and self._complete_xsave(vcpu, regs, code, rip):
            return
        if self.int3 and body[:2] == b"\x0f\xae" and len(body) > 2 and (body[2] >> 3 & 7) in MXCSR_OPS \
                and body[2] >> 6 != 3 and self._complete_mxcsr(vcpu, regs, code, rip):
            self._count(MXCSR_OPS[body[2] >> 3 & 7])
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

    def _complete_lsl(self, vcpu: Vcpu, regs, code: bytes, rip: int) -> bool:
        """``lsl reg, reg`` (Linux's NMI entry reads the CPU number this
        way): load the segment limit of the selector from the GDT and set
        ZF, as the CPU would at CPL0.  Memory operands are left to fail."""
        insn = decode(code, rip)
        if insn is None or insn.mnemonic != "lsl" or len(insn.operands) != 2:
            return False
        from capstone import x86
        dst, src = insn.operands
        if dst.type != x86.X86_OP_REG or src.type != x86.X86_OP_REG:
            return False
        dst_name, src_name = insn.reg_name(dst.reg), insn.reg_name(src.reg)
        selector = read_reg(regs, src_name) & 0xFFFF
        sregs = vcpu.get_sregs()
        ok, limit = False, 0
        index = selector & ~7
        if not selector & 4 and index and index + 7 <= sregs.gdt.limit:
            phys = linear_to_physical(vcpu, sregs.gdt.base + index, 8)
            if phys is not None:
                desc = self.memory.read_u64(phys)
                s_bit, typ, present = desc >> 44 & 1, desc >> 40 & 0xF, desc >> 47 & 1
                if present and (s_bit or typ in (1, 2, 3, 9, 11)):
                    limit = (desc & 0xFFFF) | (desc >> 48 & 0xF) << 16
                    if desc >> 55 & 1:
                        limit = (limit << 12) | 0xFFF
                    ok = True
        if ok:
            write_reg(regs, dst_name, limit)
            regs.rflags |= 1 << 6
        else:
            regs.rflags &= ~(1 << 6)
        regs.rip = rip + insn.size
        vcpu.set_regs(regs)
        return True

    def _complete_xsave(self, vcpu: Vcpu, regs, code: bytes, rip: int) -> bool:
        """``xsave``/``xrstor`` (the guest kernel's context switch; see
        :mod:`kvmkit.vmm.hostcompat.xsave`)."""
        insn = decode(code, rip)
        if insn is None or insn.mnemonic not in ("xsave", "xsave64", "xrstor", "xrstor64"):
            return False
        try:
            self.xsave.complete(vcpu, regs, insn)
        except GuestFault as fault:
            if fault.cr2 is not None:
                sregs = vcpu.get_sregs()
                sregs.cr2 = fault.cr2
                vcpu.set_sregs(sregs)
            self._inject(vcpu, fault.vector, fault.error_code)
        self._count(insn.mnemonic.rstrip("64"))
        return True

    def _complete_mxcsr(self, vcpu: Vcpu, regs, code: bytes, rip: int) -> bool:
        """``ldmxcsr m32`` / ``stmxcsr m32`` (the kernel's kernel_fpu_begin
        loads the default MXCSR): move MXCSR between guest memory and the
        vCPU's FPU state.  A reserved bit in a loaded value raises #GP."""
        insn = decode(code, rip)
        if insn is None or insn.mnemonic not in ("ldmxcsr", "stmxcsr") or len(insn.operands) != 1:
            return False
        from capstone import x86
        op = insn.operands[0]
        if op.type != x86.X86_OP_MEM:
            return False
        addr = effective_address(vcpu, regs, insn, op.mem)
        phys = linear_to_physical(vcpu, addr, 4)
        if phys is None:
            return False
        # MXCSR lives at dword 6 of the XSAVE area's legacy region (KVM_SET_FPU
        # does not reach it on every host).
        xsave = vcpu.get_xsave()
        if insn.mnemonic == "ldmxcsr":
            value = self.memory.read_u32(phys)
            regs.rip = rip + insn.size
            vcpu.set_regs(regs)
            if value & ~0xFFFF:
                self._inject(vcpu, 13, error_code=0)
                return True
            xsave.region[6] = value
            # KVM takes MXCSR from the buffer only when XSTATE_BV marks SSE
            # (or YMM) state present: mark it, or the write is dropped.
            xsave.region[XSTATE_BV_DWORD] |= XFEATURE_SSE
            vcpu.set_xsave(xsave)
        else:
            in_use = xsave.region[XSTATE_BV_DWORD] & (XFEATURE_SSE | XFEATURE_YMM)
            self.memory.write_u32(phys, xsave.region[6] if in_use else MXCSR_DEFAULT)
            regs.rip = rip + insn.size
            vcpu.set_regs(regs)
        return True

    @staticmethod
    def _inject(vcpu: Vcpu, vector: int, error_code: int | None = None) -> None:
        ev = vcpu.get_vcpu_events()
        ev.exception.injected = 1
        ev.exception.nr = vector
        ev.exception.has_error_code = int(error_code is not None)
        ev.exception.error_code = error_code or 0
        ev.exception.pending = 0
        ev.flags = 0
        vcpu.set_vcpu_events(ev)

    def _count(self, what: str) -> None:
        n = self.counts.get(what, 0) + 1
        self.counts[what] = n
        if n == 1:
            log.info("completing %s in the VMM (emulator gap)", what)
