/* A miniature of what Linux does around `syscall`, for the VMM's syscall trap
 * (kvmkit/vmm/hostcompat/syscall_trap.py): Linux's GDT layout, STAR/LSTAR/
 * SFMASK, a TSS with RSP0, an IDT whose #PF handler starts with a 3-byte NOP
 * (Linux's ASM_CLAC with SMAP off), a supervisor kernel and a ring-3 program
 * in a user page.  The program then checks, printing to the debug console:
 *   - N real syscalls (N from the command line, default 1000) return;
 *   - real page faults from ring 3 (a read of a supervisor page, a fetch from
 *     one, a read of LSTAR itself) reach the kernel's #PF handler;
 *   - a jump to LSTAR without `syscall`, with R11 holding IOPL 3, NT, VIF,
 *     VIP, gains no privilege (flags after sysretq, an `in` raises #GP);
 *   - a kernel-mode page fault reaches the handler;
 *   - the kernel rewriting its #PF handler's first instruction (as the
 *     alternatives do) keeps syscalls working.
 * Built with -DPF_STEP the handler starts with `push rax`, an instruction
 * the VMM cannot complete itself (it single-steps it instead); with
 * -DRESET_AT_END the program's exit resets the machine instead.
 * Exit status: (0 << 1) | 1 when the program ran to its end. */
#include "common.inc"
.set KERNEL_CS, 0x10
.set KERNEL_DS, 0x18
.set USER32_CS, 0x23
.set USER_DS, 0x2B
.set USER_CS, 0x33
.set TSS_SEL, 0x38
.set MSR_EFER, 0xC0000080
.set MSR_STAR, 0xC0000081
.set MSR_LSTAR, 0xC0000082
.set MSR_SFMASK, 0xC0000084
.set USER_BASE, 0x400000          /* PDE 2: the one user-accessible 2 MiB page */
.set SUPERVISOR_PAGE, 0x200000     /* PDE 1: supervisor only */
.set UNMAPPED, 0x100000000         /* PDPT 4: not present */

.global _start
.text
_start:
    mov rbx, rsi
    call cmdline_number
    test rax, rax
    jnz 1f
    mov rax, 1000
1:  mov [rip + loops], rax
    /* mask the legacy PICs: nothing may interrupt ring 3 but what we expect */
    mov al, 0xFF
    out 0x21, al
    out 0xA1, al
    /* user bit on PML4[0], PDPT[0] and PDE[2] only */
    mov rdi, cr3
    or qword ptr [rdi], 4
    mov rdi, [rdi]
    and rdi, ~0xFFF
    or qword ptr [rdi], 4
    mov rdi, [rdi]
    and rdi, ~0xFFF
    or qword ptr [rdi + 16], 4
    mov rax, cr3
    mov cr3, rax
    /* TSS descriptor and RSP0 */
    lea rax, [rip + tss]
    lea rdi, [rip + gdt + TSS_SEL]
    mov word ptr [rdi], 103
    mov word ptr [rdi + 2], ax
    shr rax, 16
    mov byte ptr [rdi + 4], al
    mov byte ptr [rdi + 5], 0x89
    mov byte ptr [rdi + 6], 0
    mov byte ptr [rdi + 7], ah
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    mov dword ptr [rdi + 12], 0
    lea rax, [rip + entry_stack_top]
    mov qword ptr [rip + tss + 4], rax
    mov word ptr [rip + tss + 102], 104     /* no I/O bitmap: ring 3 has no ports */
    /* IDT: every vector to fault_handler, then #GP and #PF */
    lea rdi, [rip + idt]
    lea rax, [rip + fault_handler]
    mov dx, KERNEL_CS
    mov ecx, 32
2:  call set_gate
    add rdi, 16
    loop 2b
    lea rdi, [rip + idt + 13 * 16]
    lea rax, [rip + gp_handler]
    call set_gate
    lea rdi, [rip + idt + 14 * 16]
    lea rax, [rip + pf_handler]
    call set_gate
    lgdt [rip + gdtr]
    lidt [rip + idtr]
    push KERNEL_CS
    lea rax, [rip + 3f]
    push rax
    retfq
3:  mov ax, KERNEL_DS
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov ax, TSS_SEL
    ltr ax
    /* syscall: EFER.SCE, STAR, LSTAR, SFMASK as Linux sets them */
    mov ecx, MSR_EFER
    rdmsr
    or eax, (1 << 0) | (1 << 11)    /* SCE, NXE (page faults report fetches) */
    wrmsr
    mov ecx, MSR_STAR
    xor eax, eax
    mov edx, (USER32_CS << 16) | KERNEL_CS
    wrmsr
    mov ecx, MSR_LSTAR
    lea rax, [rip + syscall_entry]
    mov rdx, rax
    shr rdx, 32
    wrmsr
    mov ecx, MSR_SFMASK
    mov eax, 0x47700                /* TF DF IF IOPL NT AC */
    xor edx, edx
    wrmsr
    PRINT entering                  /* exits: the VMM plants its trap now */
    push USER_DS
    mov rax, USER_BASE + 0x100000
    push rax                        /* user stack: top half of the user page */
    push 0x202
    push USER_CS
    lea rax, [rip + user_main]
    push rax
    iretq

/* ---- the kernel ------------------------------------------------------- */

/* rax = number: 0 exit(rdi), 1 print(rdi = string), 2 hex(rdi),
 * 3 count -> rax, 4 rewrite the #PF handler's first instruction,
 * 5 take a kernel-mode page fault, 6 the loop count -> rax. */
syscall_entry:
    mov [rip + user_rsp], rsp
    lea rsp, [rip + kstack_top]
    push rcx
    push r11
    push rsi
    inc qword ptr [rip + syscalls]
    cmp rax, 0
    je sys_exit
    cmp rax, 1
    je sys_print
    cmp rax, 2
    je sys_hex
    cmp rax, 3
    je sys_count
    cmp rax, 4
    je sys_rewrite
    cmp rax, 5
    je sys_kernel_fault
    cmp rax, 6
    je sys_loops
    mov rax, -38
sys_return:
    pop rsi
    pop r11
    pop rcx
    mov rsp, [rip + user_rsp]
    sysretq

sys_exit:
#ifdef RESET_AT_END
    mov al, 0xFE                    /* pulse the reset line through the i8042 */
    out 0x64, al
#endif
    mov eax, edi
    out EXIT_PORT, al
    hlt
sys_print:
    mov rsi, rdi
    call print_string
    xor eax, eax
    jmp sys_return
sys_hex:
    call print_hex
    xor eax, eax
    jmp sys_return
sys_count:
    mov rax, [rip + syscalls]
    jmp sys_return
sys_loops:
    mov rax, [rip + loops]
    jmp sys_return
sys_rewrite:
    /* what the alternatives do to ASM_CLAC: new bytes over the old (the
     * VMM's int3 included): cld; nop; nop */
    lea rdi, [rip + pf_handler]
    mov byte ptr [rdi + 1], 0x90
    mov byte ptr [rdi + 2], 0x90
    mov byte ptr [rdi], 0xFC
    PRINT rewrote                   /* exits, as Linux's boot goes on printing */
    xor eax, eax
    jmp sys_return
sys_kernel_fault:
    lea r12, [rip + 1f]
    mov rax, UNMAPPED
    mov rax, [rax]
1:  xor eax, eax
    jmp sys_return

pf_handler:
#ifdef PF_STEP
    push rax                        /* not a form the VMM completes inline */
    pop rax
    nop
#else
    .byte 0x0f, 0x1f, 0x00          /* nopl (%rax): Linux's ASM_CLAC, SMAP off */
#endif
    inc qword ptr [rip + page_faults]
    push rsi
    push rdi
    mov rdi, [rsp + 16]             /* error code */
    PRINT pf_msg
    call print_hex
    mov rdi, cr2
    call print_hex
    pop rdi
    pop rsi
    mov [rsp + 8], r12              /* resume at the recovery address in r12 */
    add rsp, 8
    iretq

gp_handler:
    push rsi
    PRINT gp_msg
    pop rsi
    mov [rsp + 8], r12
    add rsp, 8
    iretq

fault_handler:
    PRINT fault
    EXIT 0x55

print_hex:                          /* rdi, as 16 hex digits and a newline */
    push rax
    push rcx
    push rdx
    mov rdx, rdi
    mov ecx, 16
1:  rol rdx, 4
    mov eax, edx
    and eax, 0xF
    cmp eax, 10
    jb 2f
    add eax, 'a' - 10 - '0'
2:  add eax, '0'
    out DEBUGCON, al
    loop 1b
    mov al, '\n'
    out DEBUGCON, al
    pop rdx
    pop rcx
    pop rax
    ret

#include "lib.inc"
entering: .asciz "syscall: entering user mode\n"
rewrote: .asciz "kernel: rewrote the #PF handler\n"
pf_msg: .asciz "pf "
gp_msg: .asciz "gp\n"
fault: .asciz "syscall: unexpected exception\n"

/* ---- the ring-3 program (in the user page) ------------------------------ */
.section .user, "ax"
.macro SYS nr, arg
    mov eax, \nr
    mov rdi, \arg
    syscall
.endm
.macro SAY label
    mov eax, 1
    lea rdi, [rip + \label]
    syscall
.endm
user_main:
    SAY u_start
    /* N syscalls; the count comes back from the kernel */
    mov eax, 6
    syscall
    mov rbx, rax
1:  mov eax, 3
    syscall
    dec rbx
    jnz 1b
    mov rdi, rax
    mov eax, 2
    syscall
    SAY u_loop_done
    /* a real page fault: read a supervisor page */
    lea r12, [rip + 2f]
    mov rax, SUPERVISOR_PAGE
    mov rax, [rax]
    SAY u_bad
2:  SAY u_read_fault
    /* a real page fault: fetch from a supervisor page that is not LSTAR */
    lea r12, [rip + 3f]
    mov rax, SUPERVISOR_PAGE + 0x10
    jmp rax
3:  SAY u_fetch_fault
    /* a real page fault: read LSTAR's bytes (data, not a fetch) */
    lea r12, [rip + 4f]
    mov rax, [rip + lstar_user]
    mov rax, [rax]
    SAY u_bad
4:  SAY u_lstar_read
    /* a jump to LSTAR without syscall, R11 = IOPL 3 | NT | VIF | VIP | IF */
    mov rdx, [rip + lstar_user]
    lea rcx, [rip + 5f]
    mov r11, 0x3202 | (1 << 14) | (1 << 19) | (1 << 20)
    mov eax, 3
    jmp rdx
5:  pushfq
    pop rdi
    mov eax, 2
    syscall                         /* prints the flags ring 3 got back */
    lea r12, [rip + 6f]
    in al, 0x80                     /* IOPL 0: #GP */
    SAY u_port_open
6:  SAY u_jump_done
    /* a kernel-mode page fault */
    SYS 5, 0
    SAY u_kernel_fault
    /* the kernel rewrites its #PF handler's first instruction */
    SYS 4, 0
    SAY u_rewritten
    lea r12, [rip + 7f]
    mov rax, SUPERVISOR_PAGE
    mov rax, [rax]
7:  mov rbx, 100
8:  mov eax, 3
    syscall
    dec rbx
    jnz 8b
    SAY u_end
    SYS 0, 0

u_start: .asciz "user: start\n"
u_loop_done: .asciz "user: syscalls returned\n"
u_bad: .asciz "user: no fault!\n"
u_read_fault: .asciz "user: read fault handled\n"
u_fetch_fault: .asciz "user: fetch fault handled\n"
u_lstar_read: .asciz "user: lstar read fault handled\n"
u_port_open: .asciz "user: port I/O allowed!\n"
u_jump_done: .asciz "user: lstar jump done\n"
u_kernel_fault: .asciz "user: kernel fault handled\n"
u_rewritten: .asciz "user: handler rewritten\n"
u_end: .asciz "user: end\n"
.align 8
lstar_user: .quad syscall_entry

.data
.align 16
gdt:
    .quad 0
    .quad 0
    .quad 0x00AF9A000000FFFF    /* 0x10 kernel code */
    .quad 0x00CF92000000FFFF    /* 0x18 kernel data */
    .quad 0x00CFFA000000FFFF    /* 0x20 user 32-bit code */
    .quad 0x00CFF2000000FFFF    /* 0x28 user data */
    .quad 0x00AFFA000000FFFF    /* 0x30 user code */
    .quad 0, 0                  /* 0x38 TSS */
gdt_end:
gdtr: .word gdt_end - gdt - 1
      .quad gdt
.align 16
idt: .fill 32 * 16, 1, 0
idtr: .word 32 * 16 - 1
      .quad idt
.align 16
tss: .fill 104, 1, 0
.align 8
loops: .quad 0
syscalls: .quad 0
page_faults: .quad 0
user_rsp: .quad 0
.bss
.align 4096
kstack: .skip 8192
kstack_top:
entry_stack: .skip 4096
entry_stack_top:
