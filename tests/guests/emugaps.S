/* Executes, at CPL0, the instructions KVM's emulator lacks on nested hosts
 * (int3, fwait, lsl, ldmxcsr/stmxcsr, clac/stac where CPUID has SMAP) and checks that each behaved
 * as on hardware: the #BP handler saw the RIP after the int3, fwait was a
 * no-op, clac/stac cleared/set RFLAGS.AC.  Exits with status (code << 1) | 1:
 * code 0x2A = all good; anything else names the first check that failed. */
#include "common.inc"
.global _start
.text
_start:
    lea rdi, [rip + idt + 3 * 16]     /* IDT entry 3 (#BP) -> bp_handler */
    lea rax, [rip + bp_handler]
    mov dx, 0x10                      /* the boot code segment */
    call set_gate
    lidt [rip + idtr]
    xor r12d, r12d
    int3
after_int3:
    cmp r12d, 1
    jne fail1
    lea rax, [rip + after_int3]
    cmp r13, rax                      /* the handler's saved RIP */
    jne fail2
    fninit
    fwait
    mov eax, 0x10                     /* lsl of the boot code segment: 4 GiB */
    xor ebx, ebx
    lsl ebx, eax
    jnz fail5
    cmp ebx, 0xFFFFFFFF
    jne fail6
    mov eax, 0x08                     /* an empty descriptor: ZF clear */
    lsl ebx, eax
    jz fail7
    mov dword ptr [rip + mxcsr_in], 0x1F80 | 0x6000   /* round toward zero */
    ldmxcsr [rip + mxcsr_in]
    stmxcsr [rsp - 8]
    cmp dword ptr [rsp - 8], 0x7F80
    jne fail8
    mov dword ptr [rip + mxcsr_in], 0x1F80
    ldmxcsr [rip + mxcsr_in]
    mov eax, 7
    xor ecx, ecx
    cpuid
    test ebx, 1 << 20                 /* SMAP? */
    jz done
    stac
    pushfq
    pop rax
    test eax, 1 << 18
    jz fail3
    clac
    pushfq
    pop rax
    test eax, 1 << 18
    jnz fail4
done:
    EXIT 0x2A
    FAIL_EXITS 1, 2, 3, 4, 5, 6, 7, 8

bp_handler:
    inc r12d
    mov r13, [rsp]                    /* saved RIP */
    iretq

#include "lib.inc"
.data
.align 16
idt: .fill 32 * 16, 1, 0
idtr: .word 32 * 16 - 1
      .quad idt
mxcsr_in: .long 0
