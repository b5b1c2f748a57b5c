"""An Intel MultiProcessor Specification 1.4 table, so a guest kernel without
ACPI finds every vCPU, the IOAPIC and how ISA interrupts are wired.

Linux scans 0xF0000-0xFFFFF for the floating pointer; we put the pointer and
the table there (the e820 map reserves that range).
"""

from __future__ import annotations

import struct

from kvmkit.arch.x86.layout import IOAPIC_ADDR, LAPIC_ADDR

MPTABLE_ADDR = 0xF0000
APIC_VERSION = 0x14
IOAPIC_VERSION = 0x11
CPU_ENABLED, CPU_BOOTPROCESSOR = 1, 2
MP_INT, MP_NMI, MP_EXTINT = 0, 1, 3
ISA_BUS_ID, PCI_BUS_ID = 0, 1
MP_LEVEL_ACTIVE_LOW = 0xF          # polarity 11 (low), trigger 11 (level)


def _checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def build_mptable(nr_cpus: int, cpu_signature: int = 0x600, features: int = 0x201,
                  pci_interrupts: list[tuple[int, int, int]] = (),
                  base: int = MPTABLE_ADDR) -> bytes:
    """The floating pointer followed by the configuration table, for ``base``.

    ``pci_interrupts`` lists (device slot, pin 0-3 for INTA-INTD, IOAPIC pin).
    """
    ioapic_id = nr_cpus
    entries = []
    for cpu in range(nr_cpus):
        flags = CPU_ENABLED | (CPU_BOOTPROCESSOR if cpu == 0 else 0)
        entries.append(struct.pack("<BBBBII8x", 0, cpu, APIC_VERSION, flags, cpu_signature, features))
    entries.append(struct.pack("<BB6s", 1, ISA_BUS_ID, b"ISA   "))
    entries.append(struct.pack("<BB6s", 1, PCI_BUS_ID, b"PCI   "))
    entries.append(struct.pack("<BBBBI", 2, ioapic_id, IOAPIC_VERSION, 1, IOAPIC_ADDR))
    for irq in range(16):
        entries.append(struct.pack("<BBHBBBB", 3, MP_INT, 0, ISA_BUS_ID, irq, ioapic_id, irq))
    for slot, pin, gsi in pci_interrupts:
        # Level-triggered, active low (PCI's INTx#), as the ACPI _PRT says:
        # KVM's IOAPIC ignores the programmed polarity for KVM_IRQ_LINE, so
        # the VMM's 1 = asserted works with either (tests/devices/test_intx.py).
        entries.append(struct.pack("<BBHBBBB", 3, MP_INT, MP_LEVEL_ACTIVE_LOW, PCI_BUS_ID,
                                   (slot << 2) | pin, ioapic_id, gsi))
    entries.append(struct.pack("<BBHBBBB", 4, MP_EXTINT, 0, ISA_BUS_ID, 0, 0xFF, 0))
    entries.append(struct.pack("<BBHBBBB", 4, MP_NMI, 0, ISA_BUS_ID, 0, 0xFF, 1))
    body = b"".join(entries)
    table_addr = base + 16
    header = bytearray(struct.pack("<4sHBB8s12sIHHIHBB", b"PCMP", 44 + len(body), 4, 0,
                                   b"KVMKIT  ", b"KVMKIT-PC   ", 0, 0, len(entries), LAPIC_ADDR, 0, 0, 0))
    table = header + body
    table[7] = _checksum(table)
    fp = bytearray(struct.pack("<4sIBBBB4x", b"_MP_", table_addr, 1, 4, 0, 0))
    fp[10] = _checksum(fp)
    return bytes(fp) + bytes(table)
