/* A guest whose image carries 4 MiB of one repeated pattern and then idles
 * (halted, interrupts off): every copy of it holds the same 1024 pages, what
 * KSM merges across identical VMs. */
#include "common.inc"
.global _start
.text
_start:
    PRINT ready
    cli
1:  hlt
    jmp 1b
#include "lib.inc"
ready: .asciz "ksm guest ready\n"
.data
.balign 4096
.fill 1024 * 1024, 4, 0x5a5aa5a5
