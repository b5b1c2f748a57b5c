/* Prints "idle running" and halts forever with interrupts off: a guest that
 * keeps running without using a host CPU (the manager tests start 20-50 of
 * them on a 2-core machine). */
#include "common.inc"
.global _start
.text
_start:
    PRINT ready
    cli
1:  hlt
    jmp 1b
#include "lib.inc"
ready: .asciz "idle running\n"
