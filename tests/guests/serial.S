/* Writes a line to COM1 the way Linux's console does (poll LSR for THRE,
 * then write THR), then exits with status 1. */
#include "common.inc"
.global _start
.text
_start:
    lea rsi, [rip + msg]
    call com1_puts
    EXIT 0
#include "lib.inc"
msg: .asciz "serial console ok\r\n"
