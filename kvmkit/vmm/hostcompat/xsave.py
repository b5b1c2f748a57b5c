"""Completing ``xsave`` and ``xrstor`` (standard form) in the VMM.

Why: on emulating hosts guest user space runs natively and sees the host's
CPUID (PVM does not trap ring-3 CPUID), so glibc uses AVX2 whenever the
hardware XCR0 allows it.  With the guest kernel booted ``noxsave`` it never
manages AVX state (FXSAVE only), and the upper halves of YMM registers come
back zeroed: memcpy then drops 16 of every 32 bytes now and then (seen as
NULs in `sha256sum` output).  So the guest kernel must use XSAVE, with an
XCR0 that the VMM chooses through the kernel's CPUID view (x87 and SSE only:
the hardware XCR0 under the guest is then 3, glibc sees no YMM state and
stays on SSE2).  KVM's emulator lacks XSAVE and XRSTOR; they run at every
context switch, and the VMM completes them through ``KVM_GET/SET_XSAVE``,
whose buffer is the standard (non-compacted) format the instructions use.

Only the standard form is completed: the host-compat policy hides XSAVEOPT,
XSAVEC, XSAVES and XGETBV1 from the guest kernel, so it uses nothing else.

The shadow.  Cutting the guest's XCR0 is not enough: under PVM the hardware
XCR0 while guest user code runs is the host's (ring-3 `xgetbv` reads 0x207),
so user space still uses AVX, and a kernel whose XCR0 is x87|SSE switches
only the low halves of the YMM registers between tasks.  The kernel cannot
be given YMM itself (it would then run AVX code in kernel mode, which the
emulator lacks).  So every xsave also keeps, in the VMM, the components the
host enables and the guest's XCR0 does not (YMM_Hi128, PKRU), keyed by the
save area's guest-physical address (one per task, and per signal frame), and
the xrstor from that area puts them back: each task keeps its own upper
halves, as on hardware.  An area without a shadow (a new task, a forked
copy) restores them in their init state (zero).  A shadow is used only
while the area still holds what that xsave wrote (a digest of its legacy
region): a dead task's area reused for a new one (filled from
the kernel's init state) never receives the dead task's upper halves.
"""

from __future__ import annotations

import collections
import hashlib
import struct

from kvmkit.kvm.vcpu import Vcpu
from kvmkit.vmm.hostcompat.text import effective_address

SW_RESERVED = 464          # legacy bytes 464..511 are left to software
HEADER = 512                 # XSTATE_BV at 512, XCOMP_BV at 520, reserved to 575
AREA_MIN = 576
X87, SSE, YMM = 1 << 0, 1 << 1, 1 << 2
MXCSR_OFF, MXCSR_DEFAULT, MXCSR_MASK = 24, 0x1F80, 0xFFFF
XMM_OFF, XMM_SIZE = 160, 256
X87_LEGACY = ((0, 24), (32, 128))             # FCW..FDP, ST0-7: the x87 parts of the legacy region
PF_VECTOR, GP_VECTOR = 14, 13
SHADOW_ENTRIES = 16384       # save areas remembered (~4 MiB); the oldest is forgotten first


class GuestFault(Exception):
    """The instruction raises an exception in the guest instead of completing."""

    def __init__(self, vector: int, error_code: int = 0, cr2: int | None = None) -> None:
        super().__init__(vector)
        self.vector, self.error_code, self.cr2 = vector, error_code, cr2


class XsaveCompleter:
    """State shared by a machine's vCPUs: the component layout (from the
    CPUID table the VMM gave the guest)."""

    def __init__(self, memory) -> None:
        self.memory = memory
        self._layout: dict[int, tuple[int, int]] | None = None   # component -> (offset, size)
        # save area (guest-physical) -> (XSTATE_BV bits, bytes of each shadowed
        # component, digest of the area's legacy region as written)
        self.shadow: collections.OrderedDict[int, tuple[int, bytes, bytes]] = collections.OrderedDict()

    def layout(self, vcpu: Vcpu) -> dict[int, tuple[int, int]]:
        if self._layout is None:
            self._layout = {e.index: (e.ebx, e.eax) for e in vcpu.get_cpuid2()
                            if e.function == 0xD and 2 <= e.index < 63 and e.eax}
        return self._layout

    def complete(self, vcpu: Vcpu, regs, insn) -> None:
        """Do ``insn`` (a decoded xsave/xsave64/xrstor/xrstor64) and advance RIP,
        or raise :class:`GuestFault`."""
        addr = effective_address(vcpu, regs, insn, insn.operands[0].mem)
        if addr & 63:
            raise GuestFault(GP_VECTOR)
        xcr0 = next((x.value for x in _xcrs(vcpu) if x.xcr == 0), X87)
        rfbm = xcr0 & ((regs.rdx & 0xFFFFFFFF) << 32 | (regs.rax & 0xFFFFFFFF))
        size = max([AREA_MIN] + [off + n for i, (off, n) in self.layout(vcpu).items() if rfbm >> i & 1])
        state = vcpu.get_xsave()
        buf = bytearray(bytes(state))
        shadowed = {i: r for i, r in self.layout(vcpu).items() if not xcr0 >> i & 1}
        key = _physical(vcpu, addr, False)
        if insn.mnemonic.startswith("xsave"):
            area = self._save(vcpu, addr, buf, rfbm, size)
            self._keep_shadow(key, buf, shadowed, area)
        else:
            area = self._restore(vcpu, addr, buf, rfbm, xcr0, size)
            self._put_shadow(key, buf, shadowed, area)
            vcpu.set_xsave(type(state).from_buffer_copy(bytes(buf)))
        regs.rip = insn.address + insn.size
        vcpu.set_regs(regs)

    def _save(self, vcpu: Vcpu, addr: int, buf: bytearray, rfbm: int, size: int) -> bytes:
        area = bytearray(read_virtual(vcpu, self.memory, addr, size))
        if rfbm & X87:
            for off, n in X87_LEGACY:
                area[off:off + n] = buf[off:off + n]
        if rfbm & (SSE | YMM):
            area[MXCSR_OFF:MXCSR_OFF + 8] = buf[MXCSR_OFF:MXCSR_OFF + 8]
        if rfbm & SSE:
            area[XMM_OFF:XMM_OFF + XMM_SIZE] = buf[XMM_OFF:XMM_OFF + XMM_SIZE]
        for i, (off, n) in self.layout(vcpu).items():
            if rfbm >> i & 1:
                area[off:off + n] = buf[off:off + n]
        inuse, = struct.unpack_from("<Q", buf, HEADER)
        bv, = struct.unpack_from("<Q", area, HEADER)
        struct.pack_into("<Q", area, HEADER, (bv & ~rfbm) | (inuse & rfbm))
        write_virtual(vcpu, self.memory, addr, bytes(area))
        return bytes(area)

    def _restore(self, vcpu: Vcpu, addr: int, buf: bytearray, rfbm: int, xcr0: int, size: int) -> bytes:
        area = read_virtual(vcpu, self.memory, addr, size)
        bv, comp = struct.unpack_from("<QQ", area, HEADER)
        if comp or bv & ~xcr0 or any(area[HEADER + 16:AREA_MIN]):
            raise GuestFault(GP_VECTOR)
        load = bv & rfbm
        if rfbm & (SSE | YMM):
            mxcsr, = struct.unpack_from("<I", area, MXCSR_OFF)
            if mxcsr & ~MXCSR_MASK:
                raise GuestFault(GP_VECTOR)
            buf[MXCSR_OFF:MXCSR_OFF + 4] = area[MXCSR_OFF:MXCSR_OFF + 4]
        if rfbm & X87:
            for off, n in X87_LEGACY:
                buf[off:off + n] = area[off:off + n] if load & X87 else _x87_init(off, n)
        if rfbm & SSE:
            buf[XMM_OFF:XMM_OFF + XMM_SIZE] = area[XMM_OFF:XMM_OFF + XMM_SIZE] if load & SSE else bytes(XMM_SIZE)
        for i, (off, n) in self.layout(vcpu).items():
            if rfbm >> i & 1:
                buf[off:off + n] = area[off:off + n] if load >> i & 1 else bytes(n)
        cur, = struct.unpack_from("<Q", buf, HEADER)
        new = (cur & ~rfbm) | load
        mxcsr, = struct.unpack_from("<I", buf, MXCSR_OFF)
        if rfbm & SSE and not load & SSE and mxcsr != MXCSR_DEFAULT:
            # KVM takes MXCSR only with SSE marked present: the state "XMM in
            # init, MXCSR not" is the same as "SSE present with XMM zero".
            new |= SSE
        struct.pack_into("<Q", buf, HEADER, new)
        return area

    def _keep_shadow(self, key: int, buf: bytearray, shadowed: dict[int, tuple[int, int]], area: bytes) -> None:
        if not shadowed:
            return
        inuse, = struct.unpack_from("<Q", buf, HEADER)
        bits = sum(1 << i for i in shadowed) & inuse
        data = b"".join(bytes(buf[off:off + n]) for off, n in shadowed.values())
        self.shadow[key] = (bits, data, _digest(area))
        self.shadow.move_to_end(key)
        if len(self.shadow) > SHADOW_ENTRIES:
            self.shadow.popitem(last=False)

    def _put_shadow(self, key: int, buf: bytearray, shadowed: dict[int, tuple[int, int]], area: bytes) -> None:
        if not shadowed:
            return
        bits, data, digest = self.shadow.get(key, (0, b"", b""))
        if digest != _digest(area):
            bits = 0                     # not the state that xsave left: init state
        pos = 0
        for i, (off, n) in shadowed.items():
            buf[off:off + n] = data[pos:pos + n] if bits >> i & 1 else bytes(n)
            pos += n
        cur, = struct.unpack_from("<Q", buf, HEADER)
        mask = sum(1 << i for i in shadowed)
        struct.pack_into("<Q", buf, HEADER, (cur & ~mask) | bits)

    def save_state(self) -> dict:
        return {"shadow": [(k, bits, data.hex(), digest.hex())
                           for k, (bits, data, digest) in self.shadow.items()]}

    def load_state(self, state: dict) -> None:
        self.shadow = collections.OrderedDict((k, (bits, bytes.fromhex(d), bytes.fromhex(g)))
                                              for k, bits, d, g in state["shadow"])


def _digest(area: bytes) -> bytes:
    # The legacy region up to its software-reserved bytes: the kernel writes
    # those (fx_sw_bytes) and XSTATE_BV into a signal frame after xsave.
    return hashlib.blake2b(area[:SW_RESERVED], digest_size=16).digest()


def _x87_init(off: int, n: int) -> bytes:
    """The x87 part of the legacy region in its init state (FCW 0x37F, the rest 0)."""
    out = bytearray(n)
    if off == 0:
        out[0:2] = struct.pack("<H", 0x37F)
    return bytes(out)


def _xcrs(vcpu: Vcpu):
    x = vcpu.get_xcrs()
    return [x.xcrs[i] for i in range(x.nr_xcrs)]


def _pieces(addr: int, size: int):
    """(linear address, length) pieces of a range, split at page edges."""
    end = addr + size
    while addr < end:
        n = min(end - addr, 0x1000 - (addr & 0xFFF))
        yield addr, n
        addr += n


def _physical(vcpu: Vcpu, addr: int, write: bool) -> int:
    t = vcpu.translate(addr & 0xFFFFFFFFFFFFFFFF)
    if not t.valid or (write and not t.writeable):
        # A kernel-mode fault: present/write bits as the CPU would report them.
        raise GuestFault(PF_VECTOR, (1 if t.valid else 0) | (2 if write else 0), cr2=addr)
    return t.physical_address


def read_virtual(vcpu: Vcpu, memory, addr: int, size: int) -> bytes:
    """``size`` bytes of guest memory at guest-virtual ``addr`` (CPL0 view)."""
    return b"".join(memory.read(_physical(vcpu, a, False), n) for a, n in _pieces(addr, size))


def write_virtual(vcpu: Vcpu, memory, addr: int, data: bytes) -> None:
    """Write guest memory at ``addr``; translate every page first, so a fault
    leaves memory untouched (as the instruction would)."""
    pieces = [(_physical(vcpu, a, True), n) for a, n in _pieces(addr, len(data))]
    pos = 0
    for pa, n in pieces:
        memory.write(pa, data[pos:pos + n])
        pos += n
