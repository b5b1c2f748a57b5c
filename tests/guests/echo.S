/* Echoes COM1 input back to COM1 (polling), and exits with status 1 when it
 * reads 'q'.  Prints "echo ready" first. */
#include "common.inc"
.set COM1, 0x3F8
.global _start
.text
_start:
    lea rsi, [rip + ready]
0:  mov bl, byte ptr [rsi]
    test bl, bl
    jz 1f
    call putc
    inc rsi
    jmp 0b
1:  mov dx, COM1 + 5
2:  in al, dx
    test al, 1
    jz 2b
    mov dx, COM1
    in al, dx
    cmp al, 'q'
    je 3f
    mov bl, al
    call putc
    jmp 1b
3:  EXIT 0
putc:                 /* bl = byte */
    mov dx, COM1 + 5
4:  in al, dx
    test al, 0x20
    jz 4b
    mov dx, COM1
    mov al, bl
    out dx, al
    ret
#include "lib.inc"
ready: .asciz "echo ready\r\n"
