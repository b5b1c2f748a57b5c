/* Uses the VMM's ACPI tables the way an OS does: find the RSDP by scanning
 * 0xE0000-0xFFFFF, walk RSDP -> XSDT -> FADT, then per the number on the
 * command line:
 *   0  poweroff: read PM1a_CNT_BLK from the FADT and SLP_TYP from the DSDT's
 *      \_S5_ package, write SLP_TYP|SLP_EN.  The VM must end right there
 *      (status 0); falling through exits with 4.
 *   1  power button: route IOAPIC pin 9 (the FADT's SCI_INT) to vector 0x30,
 *      set PWRBTN_EN in PM1_EN, print "acpi: button armed", halt until the
 *      SCI arrives.  The handler checks PWRBTN_STS, clears it (write 1) and
 *      EOIs; the guest then exits with 0x42 (status 133).
 * Failures: 1 no RSDP, 2 no FADT, 3 no \_S5_, 0x55 exception,
 * 0x56 an SCI without PWRBTN_STS, 0x57 PWRBTN_STS still set after clearing. */
#include "common.inc"
.set PWRBTN, 0x100
.set SLP_EN, 0x2000
.set IOAPIC, 0xFEC00000
.set LAPIC, 0xFEE00000
.set SCI_VECTOR, 0x30
.global _start
.text
_start:
    mov rbx, rsi
    call cmdline_number
    mov r15, rax
    /* RSDP: "RSD PTR " on a 16-byte boundary */
    mov rsi, 0xE0000
1:  cmp dword ptr [rsi], 0x20445352         /* "RSD " */
    jne 2f
    cmp dword ptr [rsi + 4], 0x20525450     /* "PTR " */
    je 3f
2:  add rsi, 16
    cmp rsi, 0x100000
    jb 1b
    EXIT 1
3:  mov rdi, qword ptr [rsi + 24]           /* XSDT */
    mov ecx, dword ptr [rdi + 4]
    sub ecx, 36
    shr ecx, 3                              /* entries */
    lea rsi, [rdi + 36]
4:  test ecx, ecx
    jz 5f
    mov rdi, qword ptr [rsi]
    cmp dword ptr [rdi], 0x50434146         /* "FACP" */
    je 6f
    add rsi, 8
    dec ecx
    jmp 4b
5:  EXIT 2
6:  mov r14, rdi                            /* FADT */
    test r15, r15
    jnz button

poweroff:
    mov esi, dword ptr [r14 + 40]           /* DSDT */
    mov ecx, dword ptr [rsi + 4]
    sub ecx, 4
1:  cmp dword ptr [rsi], 0x5F35535F         /* "_S5_" */
    je 2f
    inc rsi
    dec ecx
    jnz 1b
    EXIT 3
2:  cmp byte ptr [rsi + 4], 0x12            /* PackageOp, 1-byte PkgLength, NumElements */
    jne 3f
    movzx eax, byte ptr [rsi + 7]           /* first element: BytePrefix n, or Zero/One */
    cmp al, 0x0A
    jne 4f
    movzx eax, byte ptr [rsi + 8]
4:  shl eax, 10
    or eax, SLP_EN
    mov edx, dword ptr [r14 + 64]           /* PM1a_CNT_BLK */
    out dx, ax
    hlt
3:  EXIT 4

button:
    mov edx, dword ptr [r14 + 56]           /* PM1a_EVT_BLK */
    mov dword ptr [rip + pm1_evt], edx
    /* IDT: exceptions to fault, vector 0x30 to the SCI handler; gates use our CS */
    mov dx, cs
    lea rdi, [rip + idt]
    xor ecx, ecx
1:  lea rax, [rip + fault]
    cmp ecx, SCI_VECTOR
    jne 2f
    lea rax, [rip + sci]
2:  call set_gate
    add rdi, 16
    inc ecx
    cmp ecx, SCI_VECTOR + 1
    jb 1b
    lidt [rip + idtr]
    mov al, 0xFF                            /* mask both 8259s: IOAPIC delivery only */
    out 0x21, al
    out 0xA1, al
    mov rdi, LAPIC
    mov dword ptr [rdi + 0x80], 0           /* TPR */
    mov dword ptr [rdi + 0xF0], 0x1FF       /* SVR: enable, spurious vector 0xFF */
    movzx eax, word ptr [r14 + 46]          /* SCI_INT: IOAPIC pin (GSI base 0) */
    lea eax, [eax * 2 + 0x10]
    mov rdi, IOAPIC
    inc eax
    mov dword ptr [rdi], eax                /* redirection high: destination APIC 0 */
    mov dword ptr [rdi + 0x10], 0
    dec eax
    mov dword ptr [rdi], eax                /* low: level, fixed, physical, unmasked */
    mov dword ptr [rdi + 0x10], 0x8000 | SCI_VECTOR
    mov edx, dword ptr [rip + pm1_evt]
    add edx, 2
    mov ax, PWRBTN                          /* PM1_EN.PWRBTN_EN */
    out dx, ax
    PRINT armed
    sti
3:  hlt
    cmp byte ptr [rip + seen], 0
    je 3b
    cli
    mov edx, dword ptr [rip + pm1_evt]
    in ax, dx
    test ax, PWRBTN
    jz 4f
    EXIT 0x57
4:  EXIT 0x42

sci:
    push rax
    push rdx
    mov edx, dword ptr [rip + pm1_evt]
    in ax, dx
    test ax, PWRBTN
    jnz 1f
    EXIT 0x56
1:  mov ax, PWRBTN                          /* write 1 to clear: the SCI drops */
    out dx, ax
    mov byte ptr [rip + seen], 1
    mov rax, LAPIC
    mov dword ptr [rax + 0xB0], 0           /* EOI */
    pop rdx
    pop rax
    iretq

fault:
    PRINT faulted
    EXIT 0x55

#include "lib.inc"
armed: .asciz "acpi: button armed\n"
faulted: .asciz "acpi: exception\n"

.data
.align 16
idt: .fill (SCI_VECTOR + 1) * 16, 1, 0
idtr: .word (SCI_VECTOR + 1) * 16 - 1
      .quad idt
pm1_evt: .long 0
seen: .byte 0
