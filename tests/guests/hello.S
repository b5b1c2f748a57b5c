/* Prints a line with string I/O and exits with the number on the command line. */
#include "common.inc"
.global _start
.text
_start:
    mov rbx, rsi
    lea rsi, [rip + msg]
    mov ecx, msg_end - msg
    mov dx, DEBUGCON
    rep outsb
    call cmdline_number
    out EXIT_PORT, al
    hlt
#include "lib.inc"
msg: .ascii "hello from ring 0\n"
msg_end:
