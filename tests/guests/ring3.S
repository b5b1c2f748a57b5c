/* Drops to ring 3 (own GDT, TSS with an all-open I/O bitmap, IDT) and does
 * N port writes to 0x80 from user mode, N from the command line; then exits
 * with status 1 (code 0).  Any exception exits with code 0x55. */
#include "common.inc"
.set USER_CS, 0x23
.set USER_SS, 0x1B
.set TSS_SEL, 0x28
.global _start
.text
_start:
    mov rbx, rsi
    call cmdline_number
    mov r15, rax
    test r15, r15
    jnz 1f
    mov r15, 1000
1:  /* make the VMM's identity map user-accessible: PML4[0], PDPT[0..3], 4x512 PDEs */
    mov rdi, cr3
    or qword ptr [rdi], 4
    mov rdi, [rdi]
    and rdi, ~0xFFF
    mov ecx, 4
2:  or qword ptr [rdi], 4
    add rdi, 8
    loop 2b
    mov rdi, cr3
    mov rdi, [rdi]
    and rdi, ~0xFFF
    mov rdi, [rdi]
    and rdi, ~0xFFF
    mov ecx, 2048
3:  or qword ptr [rdi], 4
    add rdi, 8
    loop 3b
    mov rax, cr3
    mov cr3, rax
    /* TSS descriptor */
    lea rax, [rip + tss]
    lea rdi, [rip + gdt + TSS_SEL]
    mov word ptr [rdi], tss_end - tss - 1
    mov word ptr [rdi + 2], ax
    shr rax, 16
    mov byte ptr [rdi + 4], al
    mov byte ptr [rdi + 5], 0x89
    mov byte ptr [rdi + 6], 0
    mov byte ptr [rdi + 7], ah
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    lea rax, [rip + kstack_top]
    mov qword ptr [rip + tss + 4], rax
    mov word ptr [rip + tss + 102], 104
    /* IDT: every vector to fault_handler */
    lea rdi, [rip + idt]
    lea rax, [rip + fault_handler]
    mov dx, 0x08
    mov ecx, 32
4:  call set_gate
    add rdi, 16
    loop 4b
    lgdt [rip + gdtr]
    lidt [rip + idtr]
    mov ax, TSS_SEL
    ltr ax
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    PRINT entering
    /* iretq to ring 3 */
    push USER_SS
    lea rax, [rip + ustack_top]
    push rax
    push 0x2
    push USER_CS
    lea rax, [rip + user_entry]
    push rax
    mov rcx, r15
    iretq

user_entry:
1:  out 0x80, al
    dec rcx
    jnz 1b
    xor eax, eax
    out EXIT_PORT, al
2:  jmp 2b

fault_handler:
    PRINT fault
    EXIT 0x55

#include "lib.inc"
entering: .asciz "ring3: entering user mode\n"
fault: .asciz "ring3: exception\n"

.data
.align 16
gdt:
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x08 kernel code */
    .quad 0x00CF92000000FFFF    /* 0x10 kernel data */
    .quad 0x00CFF2000000FFFF    /* 0x18 user data */
    .quad 0x00AFFA000000FFFF    /* 0x20 user code */
    .quad 0, 0                  /* 0x28 TSS */
gdt_end:
gdtr: .word gdt_end - gdt - 1
      .quad gdt
.align 16
idt: .fill 32 * 16, 1, 0
idtr: .word 32 * 16 - 1
      .quad idt
.align 16
tss: .fill 104, 1, 0
     .fill 8192, 1, 0           /* I/O permission bitmap: every port allowed */
     .byte 0xFF
tss_end:
.bss
.align 4096
kstack: .skip 8192
kstack_top:
ustack: .skip 8192
ustack_top:
