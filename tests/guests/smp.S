/* BSP wakes every AP by APIC ID with INIT-SIPI-SIPI; each AP, in real mode, counts
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
    mov r8d, 1                 /* wake each AP by its APIC ID, as Linux does */
0:  cmp r8d, r12d
    jae 8f
    mov eax, r8d
    shl eax, 24
    mov dword ptr [rdi + 0x10], eax   /* ICR high: destination APIC ID */
    mov dword ptr [rdi], 0x0000C500   /* INIT, level, assert, physical */
    mov ecx, 2000
1:  loop 1b
    mov dword ptr [rdi + 0x10], eax
    mov dword ptr [rdi], 0x00008500   /* INIT de-assert */
    mov ecx, 2000
2:  loop 2b
    mov dword ptr [rdi + 0x10], eax
    mov dword ptr [rdi], 0x00004608   /* SIPI, vector 0x08 -> 0x8000 */
    mov ecx, 2000
7:  loop 7b
    mov dword ptr [rdi + 0x10], eax
    mov dword ptr [rdi], 0x00004608
    inc r8d
    jmp 0b
8:
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
