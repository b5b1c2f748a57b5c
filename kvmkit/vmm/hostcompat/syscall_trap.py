"""The syscall trap: guest user space on hosts whose KVM emulates guest kernel code.

Why it exists.  On the ``kvm_pvm`` backend a ``syscall`` executed in guest
ring 3 jumps to LSTAR but *stays in ring 3* (that is how PVM hands syscalls
to PVM-aware kernels).  A standard kernel's entry text is a supervisor page,
so the fetch at LSTAR raises a page fault, delivered through the guest's IDT
to its #PF handler at CPL0; the kernel sees a user fault at
``entry_SYSCALL_64`` and kills the process.  Init dies first.

What it does.  Once the guest kernel has set LSTAR and its IDT, the VMM
writes ``int3`` over the first byte of the handler that IDT vector 14 points
to.  ``int3`` at CPL0 is an emulation failure on these hosts, so every guest
page fault now exits to the VMM, which reads the exception frame at RSP:

* RIP == LSTAR, CS == the 64-bit user CS, a user-mode fault that is not a
  write (the I/D bit is only reported with EFER.NXE): a syscall landing.  The vCPU is already at CPL0 on the kernel's CS
  (the fault delivery put it there) and RCX/R11 hold what ``syscall`` put
  there, so the VMM sets RIP = LSTAR, RSP = the user RSP and RFLAGS as
  ``syscall`` leaves them (masked by SFMASK), and resumes: the kernel's own
  entry code runs and its ``sysretq`` returns to ring 3.
* Anything else is a real page fault: the VMM completes the one instruction
  the ``int3`` covers (the forms kernels have there: a NOP, ``endbr64``,
  ``clac``, ``cld``) and the handler runs as usual.  Any other instruction
  is single-stepped with the original byte back in place, the other vCPUs
  held still meanwhile so none of them runs the handler untrapped.

Security.  A ring-3 program can jump to LSTAR without executing ``syscall``,
with any RCX and R11; that frame is indistinguishable from a landing, so it
is treated as one.  It must gain nothing a real ``syscall`` would not give:
``sysretq`` loads RFLAGS from R11, so R11 is sanitised to flags a ring-3
program can have (IOPL 0, IF set, no VM/NT/VIF/VIP/RF).  A RCX pointing into
the kernel is the kernel's problem, as it is with ptrace: Linux returns
through ``iretq`` when RCX is not a user address.

The planted byte.  The kernel may rewrite its own text (alternatives, static
keys, text_poke).  Every exit checks the byte through a direct view of guest
RAM (no ioctl); if it changed, the trap re-reads the instruction there and
plants again.  Less often (and whenever the byte changed) it re-reads the
IDT gate and LSTAR, so a new handler (kexec, a second kernel after reset) is
followed.  Linux's #PF entry is ``noinstr`` entry text, which kprobes refuse
and no static key patches; its first instruction is an ALTERNATIVE applied
at boot, before user space exists.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from kvmkit.kvm.constants import GUESTDBG_BLOCKIRQ, GUESTDBG_ENABLE, GUESTDBG_SINGLESTEP
from kvmkit.kvm.vcpu import Vcpu
from kvmkit.vmm.hostcompat.text import decode, linear_to_physical

log = logging.getLogger("kvmkit.hostcompat.syscall")

INT3 = 0xCC
PF_VECTOR = 14
GATE_SIZE = 16
MSR_EFER, MSR_STAR, MSR_LSTAR, MSR_SFMASK = 0xC0000080, 0xC0000081, 0xC0000082, 0xC0000084
EFER_SCE = 1 << 0
CR0_PG = 1 << 31

# Page-fault error code bits.
PF_PRESENT, PF_WRITE, PF_USER, PF_RSVD, PF_INSTR = 1, 2, 4, 8, 16

# RFLAGS a ring-3 program can set itself (popf at CPL3, IOPL 0): the
# arithmetic flags, TF, DF, AC and ID.  IF is always set in ring 3 under
# Linux; IOPL, NT, RF, VM, VIF and VIP are not the program's to choose.
RFLAGS_FIXED = 1 << 1
RFLAGS_IF = 1 << 9
RFLAGS_USER = 0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800 | (1 << 18) | (1 << 21)

# How the covered instruction is completed in the VMM, by mnemonic.
INLINE = {"nop": 0, "endbr64": 0, "endbr32": 0, "clac": 1 << 18, "cld": 1 << 10}
STEP = "step"

# How often the IDT gate and LSTAR are re-read once planted (ioctls, so not
# on every exit), and how often an unplanted trap looks for them.
VERIFY_INTERVAL = 1.0
SEARCH_INTERVAL = 0.002

_FRAME = struct.Struct("<6Q")   # error code, RIP, CS, RFLAGS, RSP, SS


@dataclass(frozen=True)
class Plant:
    """Where the int3 sits and what it covers."""

    handler: int          # guest-virtual address of the #PF handler's first byte
    phys: int             # its guest-physical address
    original: bytes       # the covered instruction's bytes, as the kernel left them
    mnemonic: str         # its decoding, e.g. "nop" or "endbr64"
    lstar: int
    user_cs: int          # the CS a 64-bit sysret returns to (STAR[63:48] + 16, RPL 3)
    sfmask: int

    @property
    def completion(self) -> str:
        return "inline" if self.mnemonic in INLINE else STEP


@dataclass
class TrapStats:
    """What the trap did; shown in the VM's exit summary and QMP query-kvmkit-stats."""

    syscalls: int = 0            # landings completed as syscalls
    page_faults: int = 0         # real page faults passed through to the guest's handler
    fallbacks: int = 0           # covered instructions single-stepped
    r11_sanitised: int = 0       # landings whose R11 held flags ring 3 cannot have
    plants: int = 0              # times the int3 was written (first plant, re-plants)
    replants: int = 0            # of those, after the kernel rewrote the byte or moved the handler
    completions: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class SyscallTrap:
    """One machine's trap.  Thread-safe: every vCPU thread calls :meth:`watch`
    on its exits and :meth:`handle` when it stops on the planted byte.

    ``hold_others(vcpu_id)`` / ``release_others(vcpu_id)`` park and unpark
    every other vCPU (the machine provides them); ``hold_others`` returns
    False when the machine is stopping.
    """

    def __init__(self, memory, hold_others: Callable[[int], bool],
                 release_others: Callable[[int], None], block_irq: bool = True) -> None:
        self.memory = memory
        self._hold_others = hold_others
        self._release_others = release_others
        self._debug_flags = GUESTDBG_ENABLE | GUESTDBG_SINGLESTEP | (GUESTDBG_BLOCKIRQ if block_irq else 0)
        self.stats = TrapStats()
        self.plant: Plant | None = None
        self._byte: memoryview | None = None
        self._lock = threading.Lock()
        self._next_check = 0.0
        self._stepping: set[int] = set()
        self._frame_cache: dict[int, tuple[int, int]] = {}   # vcpu id -> (frame RSP, its physical address)
        self.handler = -1                                    # planted address, -1 when not planted

    # ------------------------------------------------------------ planting
    def watch(self, vcpu: Vcpu) -> None:
        """Called on every exit.  Cheap unless something is due."""
        byte = self._byte
        if byte is not None and byte[0] != INT3 and not self._stepping:
            self._check(vcpu, rewritten=True)
        elif time.monotonic() >= self._next_check:
            self._check(vcpu)

    def _check(self, vcpu: Vcpu, rewritten: bool = False) -> None:
        if not self._lock.acquire(blocking=False):
            return                                    # another vCPU is at it
        try:
            self._next_check = time.monotonic() + (VERIFY_INTERVAL if self.plant else SEARCH_INTERVAL)
            found = self._find_handler(vcpu)
            if found is None:
                return
            handler, phys, lstar, user_cs, sfmask = found
            p = self.plant
            if p is not None and p.handler == handler and p.phys == phys and not self._stepping:
                if self.memory.read_u8(phys) == INT3:
                    if p.lstar != lstar or p.sfmask != sfmask or p.user_cs != user_cs:
                        self._set_plant(Plant(handler, phys, p.original, p.mnemonic, lstar, user_cs, sfmask))
                    return
                log.info("the guest rewrote its #PF handler's first instruction at %#x: planting again", handler)
            elif p is not None and not self._stepping:
                log.info("the guest's #PF handler moved from %#x to %#x: planting there", p.handler, handler)
                self._unplant()
            elif p is not None:
                return
            self._plant(vcpu, handler, phys, lstar, user_cs, sfmask, replant=p is not None)
        finally:
            self._lock.release()

    def _find_handler(self, vcpu: Vcpu) -> tuple[int, int, int, int, int] | None:
        """(handler VA, handler PA, LSTAR, user CS, SFMASK) once the guest has a
        64-bit IDT with a #PF gate and has enabled ``syscall``; else None."""
        sregs = vcpu.get_sregs()
        if not sregs.cr0 & CR0_PG or not sregs.efer & EFER_SCE:
            return None
        if sregs.idt.limit < PF_VECTOR * GATE_SIZE + GATE_SIZE - 1:
            return None
        gate_pa = linear_to_physical(vcpu, sregs.idt.base + PF_VECTOR * GATE_SIZE, GATE_SIZE)
        if gate_pa is None:
            return None
        lo, sel, attr, mid, hi, _ = struct.unpack("<HHHHII", self.memory.read(gate_pa, GATE_SIZE))
        if not attr & 0x8000 or (attr >> 8) & 0xF not in (0xE, 0xF):
            return None                              # not present, or not an interrupt/trap gate
        handler = lo | mid << 16 | hi << 32
        msrs = vcpu.get_msrs([MSR_STAR, MSR_LSTAR, MSR_SFMASK])
        lstar = msrs.get(MSR_LSTAR, 0)
        if not lstar:
            return None
        phys = linear_to_physical(vcpu, handler, 1)
        if phys is None:
            return None
        user_cs = ((msrs.get(MSR_STAR, 0) >> 48) + 16) & 0xFFFF | 3
        return handler, phys, lstar, user_cs, msrs.get(MSR_SFMASK, 0)

    def _plant(self, vcpu: Vcpu, handler: int, phys: int, lstar: int, user_cs: int, sfmask: int,
               replant: bool) -> None:
        code = self._text(vcpu, handler, phys)
        if not code or code[0] == INT3:
            # Not ours to cover (the kernel's own int3, e.g. text_poke_bp in
            # flight): look again on a later exit.
            self._next_check = time.monotonic() + SEARCH_INTERVAL
            return
        insn = decode(code, handler)
        if insn is None:
            log.warning("cannot decode the #PF handler's first instruction at %#x (%s)", handler, code.hex(" "))
            return
        self._set_plant(Plant(handler, phys, bytes(code[:insn.size]), insn.mnemonic, lstar, user_cs, sfmask))
        self.memory.write_u8(phys, INT3)
        self.stats.plants += 1
        if replant:
            self.stats.replants += 1
        log.info("syscall trap planted at the #PF handler %#x (covers %s; LSTAR %#x)",
                 handler, insn.mnemonic, lstar)

    def _text(self, vcpu: Vcpu, va: int, pa: int) -> bytes:
        """Up to 15 bytes of guest text at ``va`` (physical ``pa``), across a page edge if need be."""
        first = min(15, 0x1000 - (pa & 0xFFF))
        code = self.memory.read(pa, first)
        if first < 15:
            nxt = linear_to_physical(vcpu, va + first, 15 - first)
            if nxt is not None:
                code += self.memory.read(nxt, 15 - first)
        return code

    def _set_plant(self, p: Plant) -> None:
        self.plant = p
        self._byte = self.memory.view(p.phys, 1)
        self.handler = p.handler
        self._frame_cache.clear()

    def _unplant(self) -> None:
        """Give the covered byte back, if it is still ours."""
        p = self.plant
        if p is not None and self.memory.read_u8(p.phys) == INT3:
            self.memory.write_u8(p.phys, p.original[0])
        self.forget()

    def forget(self) -> None:
        """The guest's memory was replaced (reset, reboot, restore of other
        RAM): whatever was planted is gone; look again from scratch."""
        self.plant = None
        self._byte = None
        self.handler = -1
        self._stepping.clear()
        self._frame_cache.clear()
        self._next_check = 0.0

    # ------------------------------------------------------------ the exit
    def handle(self, vcpu: Vcpu, regs) -> None:
        """The vCPU stopped on the planted int3: a page fault reached the handler."""
        p = self.plant
        if p is None or p.handler != regs.rip:
            return      # unplanted meanwhile: resume, the original instruction runs
        frame = self._frame(vcpu, regs.rsp)
        if frame is not None:
            err, rip, cs, rflags, user_rsp, _ss = frame
            if rip == p.lstar and cs == p.user_cs and err & (PF_USER | PF_WRITE | PF_RSVD) == PF_USER:
                regs.rip = p.lstar
                regs.rsp = user_rsp
                regs.rflags = (rflags & ~p.sfmask & ~RFLAGS_IF) | RFLAGS_FIXED
                r11 = (regs.r11 & RFLAGS_USER) | RFLAGS_IF | RFLAGS_FIXED
                if r11 != regs.r11:
                    regs.r11 = r11
                    self.stats.r11_sanitised += 1
                vcpu.set_regs(regs)
                self.stats.syscalls += 1
                return
        self.stats.page_faults += 1
        done = self.stats.completions
        done[p.mnemonic] = done.get(p.mnemonic, 0) + 1
        if p.mnemonic in INLINE:
            regs.rip = p.handler + len(p.original)
            regs.rflags &= ~INLINE[p.mnemonic]
            vcpu.set_regs(regs)
            return
        self._step(vcpu)

    def _frame(self, vcpu: Vcpu, rsp: int) -> tuple[int, ...] | None:
        """The exception frame the fault pushed, or None if RSP is not mapped.

        A fault from ring 3 always pushes its frame at the same RSP of a
        vCPU (the TSS's RSP0, Linux's per-CPU entry stack, a fixed mapping),
        so that one translation is remembered per vCPU; kernel-mode faults
        (other RSPs) are translated every time.
        """
        cached = self._frame_cache.get(vcpu.id)
        if cached is not None and cached[0] == rsp:
            return _FRAME.unpack(self.memory.read(cached[1], _FRAME.size))
        pa = linear_to_physical(vcpu, rsp, _FRAME.size)
        if pa is None:
            return None   # crosses a page, or unmapped: not a user-entry frame
        frame = _FRAME.unpack(self.memory.read(pa, _FRAME.size))
        if frame[2] & 3 == 3:
            self._frame_cache[vcpu.id] = (rsp, pa)
        return frame

    # ------------------------------------------------------------ fallback
    def _step(self, vcpu: Vcpu) -> None:
        """Run the covered instruction for real: put the original byte back,
        single-step it with every other vCPU held, then plant again
        (:meth:`step_done`, on the KVM_EXIT_DEBUG that follows)."""
        if not self._hold_others(vcpu.id):
            return
        p = self.plant
        self._stepping.add(vcpu.id)
        self.memory.write_u8(p.phys, p.original[0])
        vcpu.set_guest_debug(self._debug_flags)
        self.stats.fallbacks += 1

    def step_done(self, vcpu: Vcpu) -> bool:
        """A KVM_EXIT_DEBUG: True if it ends this trap's single step."""
        if vcpu.id not in self._stepping:
            return False
        vcpu.set_guest_debug(0)
        p = self.plant
        if p is not None and self.memory.read_u8(p.phys) == p.original[0]:
            self.memory.write_u8(p.phys, INT3)
        self._stepping.discard(vcpu.id)
        self._release_others(vcpu.id)
        return True

    # ------------------------------------------------------------ state
    def save_state(self) -> dict[str, Any]:
        """What a snapshot needs to carry: the plant (the int3 itself is in RAM)."""
        p = self.plant
        return {"version": 1, "plant": None if p is None else
                {**asdict(p), "original": p.original.hex()}}

    def load_state(self, state: dict[str, Any]) -> None:
        self.forget()
        p = state.get("plant")
        if p:
            self._set_plant(Plant(**{**p, "original": bytes.fromhex(p["original"])}))
            self._next_check = time.monotonic()   # verify on the first exit

    def describe(self) -> str:
        s = self.stats
        return (f"syscall trap: {s.syscalls} syscalls completed, {s.page_faults} page faults passed "
                f"through, {s.fallbacks} single-step fallbacks, {s.plants} plants")

