/* Writes a line to COM1 the way Linux's console does (poll LSR for THRE,
 * then write THR), then exits with status 1. */
#include "common.inc"
.set COM1, 0x3F8
.global _start
.text
_start:
    lea rsi, [rip + msg]
1:  mov bl, byte ptr [rsi]
    test bl, bl
    jz 3f
    mov dx, COM1 + 5
2:  in al, dx
    test al, 0x20
    jz 2b
    mov dx, COM1
    mov al, bl
    out dx, al
    inc rsi
    jmp 1b
3:  EXIT 0
#include "lib.inc"
msg: .asciz "serial console ok\r\n"
