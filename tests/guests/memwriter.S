/* Rewrites 4 MiB at 16 MiB forever (for migration tests).  Pass g writes
 * the qword g at the start of every page and the page's number at +8, reads
 * them all back, and publishes the checksum (sum of the first qwords, which
 * must be g * PAGES) at 0x5008 and then g at 0x5000.  A page that lost an
 * update (a migration that missed a dirty page) fails the check: the guest
 * exits with code 0x21 (status 0x43).  Every 256 passes it prints "ok". */
#include "common.inc"
.set BASE, 0x1000000
.set PAGES, 1024
.global _start
.text
_start:
    PRINT ready
    mov r8, qword ptr [0x5000]
next:
    inc r8
    mov rdi, BASE
    xor ecx, ecx
1:  mov qword ptr [rdi], r8
    mov qword ptr [rdi + 8], rcx
    add rdi, 4096
    inc ecx
    cmp ecx, PAGES
    jb 1b
    mov rdi, BASE
    xor ecx, ecx
    xor eax, eax
2:  add rax, qword ptr [rdi]
    cmp qword ptr [rdi + 8], rcx
    jne bad
    add rdi, 4096
    inc ecx
    cmp ecx, PAGES
    jb 2b
    mov rdx, r8
    imul rdx, rdx, PAGES
    cmp rax, rdx
    jne bad
    mov qword ptr [0x5008], rax
    mov qword ptr [0x5000], r8
    test r8, 255
    jnz next
    PRINT ok
    jmp next
bad:
    EXIT 0x21
#include "lib.inc"
ready: .asciz "memwriter running\n"
ok: .asciz "ok\n"
