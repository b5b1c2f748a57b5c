/* kvmkit-probe: a tiny static Linux program (no libc) in the guest's
 * initramfs, for what the shell cannot do itself:
 *
 *   kvmkit-probe getppid N     N getppid() syscalls; prints N
 *   kvmkit-probe touch N       maps N fresh pages and writes one byte to each
 *                              (N page faults); prints N
 *   kvmkit-probe segv          writes to address 0 (the kernel sends SIGSEGV)
 *   kvmkit-probe lstar ADDR    jumps to ADDR (hex: the kernel's syscall entry)
 *                              without `syscall`, with R11 asking for IOPL 3,
 *                              NT, VIF and VIP; prints the RFLAGS it gets back,
 *                              then tries port I/O (IOPL 0: SIGSEGV)
 *
 * Built by `kvmkit guest build` with the host's gcc. */
.intel_syntax noprefix
.set SYS_write, 1
.set SYS_mmap, 9
.set SYS_exit, 60
.set SYS_getppid, 110

.global _start
.text
_start:
    mov r12, [rsp]                  /* argc */
    lea r13, [rsp + 8]              /* argv */
    cmp r12, 2
    jb usage
    mov rsi, [r13 + 8]
    lea rdi, [rip + s_getppid]
    call streq
    jz cmd_getppid
    lea rdi, [rip + s_touch]
    call streq
    jz cmd_touch
    lea rdi, [rip + s_segv]
    call streq
    jz cmd_segv
    lea rdi, [rip + s_lstar]
    call streq
    jz cmd_lstar
usage:
    lea rsi, [rip + s_usage]
    call puts
    mov edi, 2
    jmp exit

cmd_getppid:
    call arg2_decimal
    mov rbx, rax
    mov r14, rax
1:  test rbx, rbx
    jz 2f
    mov eax, SYS_getppid
    syscall
    dec rbx
    jmp 1b
2:  mov rdi, r14
    call put_decimal
    xor edi, edi
    jmp exit

cmd_touch:
    call arg2_decimal
    mov r14, rax
    mov eax, SYS_mmap
    xor edi, edi
    mov rsi, r14
    shl rsi, 12
    mov edx, 3                      /* PROT_READ | PROT_WRITE */
    mov r10d, 0x22                  /* MAP_PRIVATE | MAP_ANONYMOUS */
    mov r8, -1
    xor r9d, r9d
    syscall
    cmp rax, -4096
    ja fail
    mov rcx, r14
1:  test rcx, rcx
    jz 2f
    mov byte ptr [rax], 1
    add rax, 4096
    dec rcx
    jmp 1b
2:  mov rdi, r14
    call put_decimal
    xor edi, edi
    jmp exit

cmd_segv:
    lea rsi, [rip + s_segv_msg]
    call puts
    xor eax, eax
    mov byte ptr [rax], 1
    mov edi, 1
    jmp exit

cmd_lstar:
    call arg2_hex
    mov rdx, rax
    lea rcx, [rip + 1f]
    mov r11, 0x3202 | (1 << 14) | (1 << 19) | (1 << 20)
    mov eax, SYS_getppid
    jmp rdx
1:  pushfq
    pop rdi
    lea rsi, [rip + s_flags]
    call puts
    call put_hex
    lea rsi, [rip + s_port]
    call puts
    in al, 0x80
    lea rsi, [rip + s_port_open]
    call puts
    mov edi, 3
    jmp exit

fail:
    mov edi, 1
exit:
    mov eax, SYS_exit
    syscall

/* ---- helpers ------------------------------------------------------------ */
streq:                              /* rsi, rdi: C strings; ZF set if equal */
    push rsi
    push rdi
1:  mov al, [rsi]
    cmp al, [rdi]
    jne 2f
    inc rsi
    inc rdi
    test al, al
    jnz 1b
2:  pop rdi
    pop rsi
    ret

arg2_decimal:                       /* argv[2] as a decimal number */
    cmp r12, 3
    jb usage
    mov rsi, [r13 + 16]
    xor eax, eax
1:  movzx ecx, byte ptr [rsi]
    sub ecx, '0'
    cmp ecx, 9
    ja 2f
    imul rax, rax, 10
    add rax, rcx
    inc rsi
    jmp 1b
2:  ret

arg2_hex:                           /* argv[2] as hex, with or without 0x */
    cmp r12, 3
    jb usage
    mov rsi, [r13 + 16]
    cmp word ptr [rsi], 0x7830      /* "0x" */
    jne 1f
    add rsi, 2
1:  xor eax, eax
2:  movzx ecx, byte ptr [rsi]
    or ecx, 0x20
    sub ecx, '0'
    cmp ecx, 9
    jbe 3f
    sub ecx, 'a' - '0' - 10
    cmp ecx, 10
    jb 4f
    cmp ecx, 15
    ja 4f
3:  shl rax, 4
    add rax, rcx
    inc rsi
    jmp 2b
4:  ret

puts:                               /* rsi = C string, to stdout */
    push rdi
    mov rdx, rsi
1:  cmp byte ptr [rdx], 0
    je 2f
    inc rdx
    jmp 1b
2:  sub rdx, rsi
    mov edi, 1
    mov eax, SYS_write
    syscall
    pop rdi
    ret

put_decimal:                        /* rdi, in decimal, and a newline */
    lea rsi, [rip + numbuf + 31]
    mov byte ptr [rsi], '\n'
    mov rax, rdi
    mov ecx, 10
1:  xor edx, edx
    div rcx
    add dl, '0'
    dec rsi
    mov [rsi], dl
    test rax, rax
    jnz 1b
    lea rdx, [rip + numbuf + 32]
    sub rdx, rsi
    mov edi, 1
    mov eax, SYS_write
    syscall
    ret

put_hex:                            /* rdi, as 0x and 16 hex digits, and a newline */
    lea rsi, [rip + numbuf]
    mov word ptr [rsi], 0x7830
    mov ecx, 16
    lea r8, [rsi + 2]
1:  rol rdi, 4
    mov eax, edi
    and eax, 0xF
    cmp eax, 10
    jb 2f
    add eax, 'a' - 10 - '0'
2:  add eax, '0'
    mov [r8], al
    inc r8
    dec ecx
    jnz 1b
    mov byte ptr [r8], '\n'
    mov edx, 19
    mov edi, 1
    mov eax, SYS_write
    syscall
    ret

.section .rodata
s_getppid: .asciz "getppid"
s_touch: .asciz "touch"
s_segv: .asciz "segv"
s_lstar: .asciz "lstar"
s_usage: .asciz "usage: kvmkit-probe getppid N | touch N | segv | lstar ADDR\n"
s_segv_msg: .asciz "writing to address 0\n"
s_flags: .asciz "rflags "
s_port: .asciz "trying port I/O\n"
s_port_open: .asciz "port I/O allowed!\n"
.bss
numbuf: .skip 32
