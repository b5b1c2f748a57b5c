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
 *   kvmkit-probe xmm N         loads XMM0-15 with known values, then N times
 *                              yields the CPU (sched_yield) and checks them;
 *                              prints how many came back changed (FPU state
 *                              lost across context switches)
 *   kvmkit-probe xmmspin N     the same, spinning (no syscalls) instead of
 *                              yielding: what interrupts do to ring-3 state
 *   kvmkit-probe xmmfault N    the same, taking a page fault (a fresh page)
 *                              each time
 *   kvmkit-probe cpuid LEAF [SUBLEAF]
 *                              prints EAX EBX ECX EDX of CPUID as ring 3 sees it
 *   kvmkit-probe ymm MODE N    the XMM check with the full YMM registers
 *                              (MODE: yield, spin or fault)
 *   kvmkit-probe xgetbv        prints XCR0 as ring 3 reads it (what glibc checks)
 *   kvmkit-probe vsock-echo PORT
 *                              accepts one vsock connection on PORT and echoes
 *                              what it reads until the peer closes
 *   kvmkit-probe vsock-send CID PORT
 *                              connects to CID:PORT, sends stdin, then prints
 *                              what comes back until the peer closes
 *
 * Built by `kvmkit guest build` with the host's gcc. */
.intel_syntax noprefix
.set SYS_write, 1
.set SYS_mmap, 9
.set SYS_exit, 60
.set SYS_getppid, 110
.set SYS_sched_yield, 24
.set SYS_read, 0
.set SYS_close, 3
.set SYS_socket, 41
.set SYS_connect, 42
.set SYS_accept, 43
.set SYS_shutdown, 48
.set SYS_bind, 49
.set SYS_listen, 50
.set AF_VSOCK, 40
.set SOCK_STREAM, 1

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
    lea rdi, [rip + s_xmm]
    call streq
    jz cmd_xmm
    lea rdi, [rip + s_xmmspin]
    call streq
    jz cmd_xmmspin
    lea rdi, [rip + s_xmmfault]
    call streq
    jz cmd_xmmfault
    lea rdi, [rip + s_cpuid]
    call streq
    jz cmd_cpuid
    lea rdi, [rip + s_xgetbv]
    call streq
    jz cmd_xgetbv
    lea rdi, [rip + s_ymm]
    call streq
    jz cmd_ymm
    lea rdi, [rip + s_vecho]
    call streq
    jz cmd_vsock_echo
    lea rdi, [rip + s_vsend]
    call streq
    jz cmd_vsock_send
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

cmd_xmmfault:
    call arg2_decimal               /* N fresh pages to fault in, one per check */
    mov r15, rax
    mov eax, SYS_mmap
    xor edi, edi
    mov rsi, r15
    shl rsi, 12
    mov edx, 3
    mov r10d, 0x22
    mov r8, -1
    xor r9d, r9d
    syscall
    cmp rax, -4096
    ja fail
    mov [rip + xmm_pages], rax
    mov byte ptr [rip + xmm_spin], 2
    jmp cmd_xmm
cmd_xmmspin:
    mov byte ptr [rip + xmm_spin], 1
cmd_xmm:
    call arg2_decimal
    mov rbx, rax
    xor r14d, r14d                  /* registers found changed */
    lea rdi, [rip + xmm_values]     /* 16 distinct values, one per register */
    mov ecx, 32
    mov rax, 0x1111111111111111
    mov rdx, 0x0101010101010101
1:  mov [rdi], rax
    add rdi, 8
    add rax, rdx
    dec ecx
    jnz 1b
xmm_load:
    movdqu xmm0, [rip + xmm_values + 0]
    movdqu xmm1, [rip + xmm_values + 16]
    movdqu xmm2, [rip + xmm_values + 32]
    movdqu xmm3, [rip + xmm_values + 48]
    movdqu xmm4, [rip + xmm_values + 64]
    movdqu xmm5, [rip + xmm_values + 80]
    movdqu xmm6, [rip + xmm_values + 96]
    movdqu xmm7, [rip + xmm_values + 112]
    movdqu xmm8, [rip + xmm_values + 128]
    movdqu xmm9, [rip + xmm_values + 144]
    movdqu xmm10, [rip + xmm_values + 160]
    movdqu xmm11, [rip + xmm_values + 176]
    movdqu xmm12, [rip + xmm_values + 192]
    movdqu xmm13, [rip + xmm_values + 208]
    movdqu xmm14, [rip + xmm_values + 224]
    movdqu xmm15, [rip + xmm_values + 240]
2:  test rbx, rbx
    jz 5f
    cmp byte ptr [rip + xmm_spin], 1
    je 6f
    ja 9f
    mov eax, SYS_sched_yield
    syscall
    jmp 7f
9:  mov rax, [rip + xmm_pages]      /* a page fault: the first touch of a page */
    mov byte ptr [rax], 1
    add rax, 4096
    mov [rip + xmm_pages], rax
    jmp 7f
6:  mov ecx, 20000
8:  pause
    dec ecx
    jnz 8b
7:
    movdqu [rip + xmm_now + 0], xmm0
    movdqu [rip + xmm_now + 16], xmm1
    movdqu [rip + xmm_now + 32], xmm2
    movdqu [rip + xmm_now + 48], xmm3
    movdqu [rip + xmm_now + 64], xmm4
    movdqu [rip + xmm_now + 80], xmm5
    movdqu [rip + xmm_now + 96], xmm6
    movdqu [rip + xmm_now + 112], xmm7
    movdqu [rip + xmm_now + 128], xmm8
    movdqu [rip + xmm_now + 144], xmm9
    movdqu [rip + xmm_now + 160], xmm10
    movdqu [rip + xmm_now + 176], xmm11
    movdqu [rip + xmm_now + 192], xmm12
    movdqu [rip + xmm_now + 208], xmm13
    movdqu [rip + xmm_now + 224], xmm14
    movdqu [rip + xmm_now + 240], xmm15
    lea rsi, [rip + xmm_now]
    lea rdi, [rip + xmm_values]
    mov ecx, 32
3:  mov rax, [rsi]
    cmp rax, [rdi]
    jne 4f
    add rsi, 8
    add rdi, 8
    dec ecx
    jnz 3b
    dec rbx
    jmp 2b
4:  inc r14
    dec rbx
    jmp xmm_load
5:  mov rdi, r14
    call put_decimal
    xor edi, edi
    jmp exit

cmd_ymm:                            /* argv[2] = yield|spin|fault, argv[3] = N */
    mov rsi, [r13 + 16]
    mov al, [rsi]
    mov [rip + ymm_mode], al
    cmp r12, 4
    jb usage
    mov rsi, [r13 + 24]
    call parse_decimal
    mov rbx, rax
    mov eax, SYS_mmap               /* pages for the fault mode */
    xor edi, edi
    mov rsi, rbx
    shl rsi, 12
    mov edx, 3
    mov r10d, 0x22
    mov r8, -1
    xor r9d, r9d
    syscall
    mov [rip + xmm_pages], rax
    xor r14d, r14d
    mov eax, 39                     /* getpid: values differ per process */
    syscall
    mov rdx, 0x0101010101010101
    imul rax, rdx
    lea rdi, [rip + ymm_values]
    mov ecx, 64
1:  mov [rdi], rax
    add rdi, 8
    add rax, rdx
    dec ecx
    jnz 1b
ymm_load:
    vmovdqu ymm0, [rip + ymm_values + 0]
    vmovdqu ymm1, [rip + ymm_values + 32]
    vmovdqu ymm2, [rip + ymm_values + 64]
    vmovdqu ymm3, [rip + ymm_values + 96]
    vmovdqu ymm4, [rip + ymm_values + 128]
    vmovdqu ymm5, [rip + ymm_values + 160]
    vmovdqu ymm6, [rip + ymm_values + 192]
    vmovdqu ymm7, [rip + ymm_values + 224]
    vmovdqu ymm8, [rip + ymm_values + 256]
    vmovdqu ymm9, [rip + ymm_values + 288]
    vmovdqu ymm10, [rip + ymm_values + 320]
    vmovdqu ymm11, [rip + ymm_values + 352]
    vmovdqu ymm12, [rip + ymm_values + 384]
    vmovdqu ymm13, [rip + ymm_values + 416]
    vmovdqu ymm14, [rip + ymm_values + 448]
    vmovdqu ymm15, [rip + ymm_values + 480]
2:  test rbx, rbx
    jz 5f
    mov al, [rip + ymm_mode]
    cmp al, 'y'
    jne 6f
    mov eax, SYS_sched_yield
    syscall
    jmp 7f
6:  cmp al, 'f'
    jne 8f
    mov rax, [rip + xmm_pages]
    mov byte ptr [rax], 1
    add rax, 4096
    mov [rip + xmm_pages], rax
    jmp 7f
8:  mov ecx, 20000
9:  pause
    dec ecx
    jnz 9b
7:
    vmovdqu [rip + ymm_now + 0], ymm0
    vmovdqu [rip + ymm_now + 32], ymm1
    vmovdqu [rip + ymm_now + 64], ymm2
    vmovdqu [rip + ymm_now + 96], ymm3
    vmovdqu [rip + ymm_now + 128], ymm4
    vmovdqu [rip + ymm_now + 160], ymm5
    vmovdqu [rip + ymm_now + 192], ymm6
    vmovdqu [rip + ymm_now + 224], ymm7
    vmovdqu [rip + ymm_now + 256], ymm8
    vmovdqu [rip + ymm_now + 288], ymm9
    vmovdqu [rip + ymm_now + 320], ymm10
    vmovdqu [rip + ymm_now + 352], ymm11
    vmovdqu [rip + ymm_now + 384], ymm12
    vmovdqu [rip + ymm_now + 416], ymm13
    vmovdqu [rip + ymm_now + 448], ymm14
    vmovdqu [rip + ymm_now + 480], ymm15
    lea rsi, [rip + ymm_now]
    lea rdi, [rip + ymm_values]
    mov ecx, 64
3:  mov rax, [rsi]
    cmp rax, [rdi]
    jne 4f
    add rsi, 8
    add rdi, 8
    dec ecx
    jnz 3b
    dec rbx
    jmp 2b
4:  inc r14
    dec rbx
    jmp ymm_load
5:  vzeroupper
    mov rdi, r14
    call put_decimal
    xor edi, edi
    jmp exit

cmd_xgetbv:
    xor ecx, ecx
    xgetbv
    shl rdx, 32
    or rax, rdx
    mov rdi, rax
    call put_hex
    xor edi, edi
    jmp exit

cmd_cpuid:
    call arg2_hex
    mov r14, rax
    xor r15d, r15d
    cmp r12, 4
    jb 1f
    mov rsi, [r13 + 24]
    call parse_decimal
    mov r15, rax
1:  mov eax, r14d
    mov ecx, r15d
    cpuid
    mov [rip + cpuid_out], eax
    mov [rip + cpuid_out + 4], ebx
    mov [rip + cpuid_out + 8], ecx
    mov [rip + cpuid_out + 12], edx
    lea rbx, [rip + cpuid_out]
    mov r14d, 4
2:  mov edi, [rbx]
    call put_hex
    add rbx, 4
    dec r14d
    jnz 2b
    xor edi, edi
    jmp exit

cmd_vsock_echo:                     /* socket, bind(CID_ANY:PORT), listen, accept, echo */
    call arg2_decimal
    mov [rip + svm_port], eax
    mov dword ptr [rip + svm_cid], -1
    call vsock_socket
    mov rbx, rax
    mov eax, SYS_bind
    mov rdi, rbx
    lea rsi, [rip + sockaddr_vm]
    mov edx, 16
    syscall
    test rax, rax
    jnz fail
    mov eax, SYS_listen
    mov rdi, rbx
    mov esi, 1
    syscall
    test rax, rax
    jnz fail
    lea rsi, [rip + s_listening]
    call puts
    mov eax, SYS_accept
    mov rdi, rbx
    xor esi, esi
    xor edx, edx
    syscall
    test rax, rax
    js fail
    mov rbx, rax
1:  mov eax, SYS_read
    mov rdi, rbx
    lea rsi, [rip + iobuf]
    mov edx, 4096
    syscall
    test rax, rax
    jle 2f
    mov rdx, rax
    mov eax, SYS_write
    mov rdi, rbx
    lea rsi, [rip + iobuf]
    syscall
    jmp 1b
2:  xor edi, edi
    jmp exit

cmd_vsock_send:                     /* connect(CID:PORT), stdin -> socket, socket -> stdout */
    call arg2_decimal
    mov [rip + svm_cid], eax
    cmp r12, 4
    jb usage
    mov rsi, [r13 + 24]
    call parse_decimal
    mov [rip + svm_port], eax
    call vsock_socket
    mov rbx, rax
    mov eax, SYS_connect
    mov rdi, rbx
    lea rsi, [rip + sockaddr_vm]
    mov edx, 16
    syscall
    test rax, rax
    jnz fail
1:  mov eax, SYS_read                /* stdin to the socket */
    xor edi, edi
    lea rsi, [rip + iobuf]
    mov edx, 4096
    syscall
    test rax, rax
    jle 2f
    mov rdx, rax
    mov eax, SYS_write
    mov rdi, rbx
    lea rsi, [rip + iobuf]
    syscall
    jmp 1b
2:  mov eax, SYS_shutdown            /* SHUT_WR: the peer sees the end */
    mov rdi, rbx
    mov esi, 1
    syscall
3:  mov eax, SYS_read                /* the socket to stdout */
    mov rdi, rbx
    lea rsi, [rip + iobuf]
    mov edx, 4096
    syscall
    test rax, rax
    jle 4f
    mov rdx, rax
    mov eax, SYS_write
    mov edi, 1
    lea rsi, [rip + iobuf]
    syscall
    jmp 3b
4:  xor edi, edi
    jmp exit

vsock_socket:
    mov eax, SYS_socket
    mov edi, AF_VSOCK
    mov esi, SOCK_STREAM
    xor edx, edx
    syscall
    test rax, rax
    js fail
    ret

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
parse_decimal:                      /* rsi: C string */
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
s_xmm: .asciz "xmm"
s_xmmspin: .asciz "xmmspin"
s_xmmfault: .asciz "xmmfault"
s_cpuid: .asciz "cpuid"
s_xgetbv: .asciz "xgetbv"
s_ymm: .asciz "ymm"
s_vecho: .asciz "vsock-echo"
s_vsend: .asciz "vsock-send"
s_listening: .asciz "listening\n"
s_usage: .asciz "usage: kvmkit-probe getppid N | touch N | segv | lstar ADDR | xmm N | xmmspin N | xmmfault N | cpuid LEAF [SUB] | xgetbv | ymm yield|spin|fault N | vsock-echo PORT | vsock-send CID PORT\n"
s_segv_msg: .asciz "writing to address 0\n"
s_flags: .asciz "rflags "
s_port: .asciz "trying port I/O\n"
s_port_open: .asciz "port I/O allowed!\n"
.data
.align 8
sockaddr_vm:                        /* struct sockaddr_vm */
    .short AF_VSOCK
    .short 0
svm_port: .long 0
svm_cid: .long 0
    .long 0
.bss
numbuf: .skip 32
iobuf: .skip 4096
.align 16
xmm_values: .skip 256
xmm_now: .skip 256
xmm_spin: .skip 1
ymm_mode: .skip 1
.align 32
ymm_values: .skip 512
ymm_now: .skip 512
.align 8
cpuid_out: .skip 16
.align 8
xmm_pages: .skip 8
