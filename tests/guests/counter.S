/* Counts forever at guest-physical 0x5000 (tests pause/resume and QMP). */
#include "common.inc"
.global _start
.text
_start:
    PRINT ready
    mov rdi, 0x5000
1:  inc qword ptr [rdi]
    jmp 1b
#include "lib.inc"
ready: .asciz "counter running\n"
