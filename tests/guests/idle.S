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
#ifdef KSM_PATTERN
/* The ksm variant: 4 MiB of one repeated pattern in the image, so every copy
 * of the guest holds the same 1024 pages, what KSM merges across VMs. */
.data
.balign 4096
.fill 1024 * 1024, 4, 0x5a5aa5a5
#endif
