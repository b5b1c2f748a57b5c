/* BSP wakes every AP with INIT-SIPI-SIPI; each AP, in real mode, counts
 * itself in at 0x5100.  The BSP exits with the number of CPUs it saw. */
#include "common.inc"
.set APIC_ICR_LO, 0xFEE00300
.set AP_COUNT, 0x5100
.global _start
.text
_start:
    mov rbx, rsi
    mov eax, 1
    cpuid
    shr ebx, 16
    and ebx, 0xFF              /* logical processors (the VMM's CPUID policy) */
    mov r12d, ebx
    mov dword ptr [AP_COUNT], 0
    mov rdi, APIC_ICR_LO
    mov dword ptr [rdi], 0x000C4500   /* INIT, all excluding self */
    mov ecx, 20000
1:  loop 1b
    mov dword ptr [rdi], 0x000C4608   /* SIPI, vector 0x08 -> 0x8000 */
    mov ecx, 20000
2:  loop 2b
    mov dword ptr [rdi], 0x000C4608
    lea r13, [r12 - 1]
    mov r14, 50000000
3:  mov eax, dword ptr [AP_COUNT]
    cmp rax, r13
    jae 4f
    dec r14
    jnz 3b
4:  PRINT done
    mov eax, dword ptr [AP_COUNT]
    inc eax
    out EXIT_PORT, al
    hlt
#include "lib.inc"
done: .asciz "smp: APs counted\n"

.section .tramp, "ax"
.code16
ap_start:
    cli
    xor ax, ax
    mov ds, ax
    lock inc dword ptr [AP_COUNT]
5:  hlt
    jmp 5b
