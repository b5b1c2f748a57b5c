/* Echoes COM1 input back to COM1 (polling), and exits with status 1 when it
 * reads 'q'.  Prints "echo ready" first. */
#include "common.inc"
.set COM1, 0x3F8
.global _start
.text
_start:
    lea rsi, [rip + ready]
    call com1_puts
1:  mov dx, COM1 + 5
2:  in al, dx
    test al, 1
    jz 2b
    mov dx, COM1
    in al, dx
    cmp al, 'q'
    je 3f
    mov bl, al
    call com1_putc
    jmp 1b
3:  EXIT 0
#include "lib.inc"
ready: .asciz "echo ready\r\n"
