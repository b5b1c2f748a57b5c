/* XSAVE and XRSTOR (standard form) at CPL0, as a Linux kernel's context
 * switch uses them: with XCR0 = x87|SSE, XMM0/XMM15 and MXCSR go out to a
 * 64-byte aligned area and come back after being clobbered; XSTATE_BV says
 * what the area holds; a second area holds another "task"'s state and each
 * restores its own; an unaligned area raises #GP and an unmapped one #PF
 * with CR2 set, and the instruction did nothing.  Exits with status
 * (code << 1) | 1: code 0x2A = all good, anything else names the failed check. */
#include "common.inc"
.global _start
.text
_start:
    lea rdi, [rip + idt + 13 * 16]    /* #GP -> gp_handler */
    lea rax, [rip + gp_handler]
    mov dx, 0x10
    call set_gate
    lea rdi, [rip + idt + 14 * 16]    /* #PF -> pf_handler */
    lea rax, [rip + pf_handler]
    call set_gate
    lidt [rip + idtr]
    mov rax, cr4
    or rax, (1 << 18) | (1 << 9) | (1 << 10)   /* OSXSAVE, OSFXSR, OSXMMEXCPT */
    mov cr4, rax
    xor ecx, ecx                      /* XCR0 = x87 | SSE */
    xor edx, edx
    mov eax, 3
    xsetbv

    /* task A: pattern A in xmm0/xmm15, MXCSR round-toward-zero */
    movdqu xmm0, [rip + pattern_a]
    movdqu xmm15, [rip + pattern_b]
    ldmxcsr [rip + mxcsr_rz]
    mov eax, -1
    mov edx, -1
    xsave64 [rip + area_a]
    mov rax, [rip + area_a + 512]     /* XSTATE_BV: SSE present */
    test eax, 2
    jz fail1
    mov rax, [rip + area_a + 160]     /* XMM0 in the legacy region */
    cmp rax, [rip + pattern_a]
    jne fail2
    mov rax, [rip + area_a + 160 + 15 * 16 + 8]
    cmp rax, [rip + pattern_b + 8]
    jne fail3
    cmp dword ptr [rip + area_a + 24], 0x7F80   /* MXCSR */
    jne fail4

    /* task B: other values, saved to its own area */
    movdqu xmm0, [rip + pattern_b]
    movdqu xmm15, [rip + pattern_a]
    ldmxcsr [rip + mxcsr_default]
    mov eax, -1
    mov edx, -1
    xsave64 [rip + area_b]

    /* back to A: everything comes back */
    mov eax, -1
    mov edx, -1
    xrstor64 [rip + area_a]
    movdqu [rip + out], xmm0
    mov rax, [rip + out]
    cmp rax, [rip + pattern_a]
    jne fail5
    mov rax, [rip + out + 8]
    cmp rax, [rip + pattern_a + 8]
    jne fail5
    movdqu [rip + out], xmm15
    mov rax, [rip + out + 8]
    cmp rax, [rip + pattern_b + 8]
    jne fail6
    stmxcsr [rip + out]
    cmp dword ptr [rip + out], 0x7F80
    jne fail7
    /* and B's */
    mov eax, -1
    mov edx, -1
    xrstor64 [rip + area_b]
    movdqu [rip + out], xmm0
    mov rax, [rip + out]
    cmp rax, [rip + pattern_b]
    jne fail8
    stmxcsr [rip + out]
    cmp dword ptr [rip + out], 0x1F80
    jne fail9

    /* an area whose XSTATE_BV lacks SSE: xrstor puts XMM in its init state */
    mov qword ptr [rip + area_a + 512], 1
    mov eax, -1
    mov edx, -1
    xrstor64 [rip + area_a]
    movdqu [rip + out], xmm0
    mov rax, [rip + out]
    or rax, [rip + out + 8]
    jnz fail10

    /* faults: unaligned -> #GP, unmapped -> #PF with CR2; nothing written */
    xor r12d, r12d
    lea r14, [rip + after_gp]
    mov eax, -1
    mov edx, -1
    xsave64 [rip + area_b + 8]
after_gp:
    cmp r12d, 13
    jne fail11
    xor r12d, r12d
    lea r14, [rip + after_pf]
    mov rbx, 0x100000000
    mov eax, -1
    mov edx, -1
    xsave64 [rbx]
after_pf:
    cmp r12d, 14
    jne fail12
    mov rax, cr2
    mov rbx, 0x100000000
    cmp rax, rbx
    jne fail13
    EXIT 0x2A
    FAIL_EXITS 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13

/* #GP and #PF push an error code: note the vector, resume at r14. */
gp_handler:
    mov r12d, 13
    jmp 1f
pf_handler:
    mov r12d, 14
1:  add rsp, 8                        /* the error code */
    mov [rsp], r14                    /* the saved RIP */
    iretq

#include "lib.inc"
.data
.align 64
area_a: .fill 1024, 1, 0
area_b: .fill 1024, 1, 0
pattern_a: .quad 0x1122334455667788, 0x99aabbccddeeff00
pattern_b: .quad 0x0123456789abcdef, 0xfedcba9876543210
out: .quad 0, 0
mxcsr_rz: .long 0x7F80
mxcsr_default: .long 0x1F80
.align 16
idt: .fill 32 * 16, 1, 0
idtr: .word 32 * 16 - 1
      .quad idt
