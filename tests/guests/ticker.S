/* Counts at guest-physical 0x5000 and prints every value in decimal, one
 * per line, to the debug console: a snapshot taken at any instant (even in
 * the middle of a number) must continue the sequence with no gap and no
 * repeat, and clones of it must each continue it on their own. */
#include "common.inc"
.global _start
.text
_start:
    mov rdi, 0x5000
1:  inc qword ptr [rdi]
    mov rax, qword ptr [rdi]
    call print_decimal
    jmp 1b

print_decimal:           /* rax = value; clobbers rax, rcx, rdx, r8 */
    mov r8, rsp
    sub rsp, 32
    mov rcx, 10
    dec r8
    mov byte ptr [r8], '\n'
2:  xor edx, edx
    div rcx
    add dl, '0'
    dec r8
    mov byte ptr [r8], dl
    test rax, rax
    jnz 2b
    mov dx, DEBUGCON
3:  mov al, byte ptr [r8]
    out dx, al
    inc r8
    cmp al, '\n'
    jne 3b
    add rsp, 32
    ret
#include "lib.inc"
