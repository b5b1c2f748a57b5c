"""Minimal ACPI tables for the kvmkit PC: enough for a guest to power off
(``\\_S5`` + PM1a control block) and to get a power button (fixed-feature
PWRBTN in the PM1a event block), the way small VMMs do it.

Tables: RSDP (v2) -> XSDT -> {FADT, MADT}; FADT -> {FACS, DSDT}.  The
hardware is not "reduced": Linux only wires the fixed-feature power button
and a PM1-based poweroff on a full FADT, and a PM1 block is two I/O ports,
cheaper than a GED device and its AML.

Addresses: Linux scans 0xE0000-0xFFFFF for the RSDP.  The MP table sits at
0xF0000, so the RSDP goes to 0xE0000 and the tables follow from 0xE0040;
everything fits below 0xF0000.  The VMM must keep that range out of usable
RAM in the e820 map (see :data:`ACPI_REGION`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from kvmkit.arch.x86 import aml
from kvmkit.arch.x86.layout import IOAPIC_ADDR, LAPIC_ADDR, PCI_MMIO_END, PCI_MMIO_START

RSDP_ADDR = 0xE0000
TABLES_ADDR = 0xE0040
ACPI_REGION = (0xE0000, 0xF0000)   # [start, end): reserve in e820 (the MP table owns 0xF0000 up)

# The fixed hardware the FADT describes; kvmkit.devices.acpi_pm implements it.
PM1_EVT_PORT = 0x600               # PM1a_STS (16 bits) then PM1a_EN (16 bits)
PM1_EVT_LEN = 4
PM1_CNT_PORT = 0x604               # PM1a_CNT (16 bits)
PM1_CNT_LEN = 2
PM_PORTS_LEN = PM1_CNT_PORT + PM1_CNT_LEN - PM1_EVT_PORT
SCI_IRQ = 9                        # what PC chipsets (PIIX4, ICH9) use, and QEMU
# SLP_TYP value that means soft-off (S5).  Not 0: a guest that sets SLP_EN
# without choosing a sleep type must not power the VM off by accident.
SLP_TYP_S5 = 5

OEM_ID = b"KVMKIT"
OEM_TABLE_ID = b"KVMKITPC"
CREATOR_ID = b"KVMK"

# FADT Flags (ACPI 6.4 table 5.10) and IA-PC boot architecture flags (5.11).
FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_SLP_BUTTON = 1 << 5           # set = no fixed-feature sleep button
FADT_FIX_RTC = 1 << 6              # set = no RTC wake status in PM1
BOOT_LEGACY_DEVICES = 1 << 0       # ISA-style devices (COM1, RTC) exist
BOOT_8042 = 1 << 1
BOOT_VGA_NOT_PRESENT = 1 << 2
CMOS_CENTURY_INDEX = 0x32          # kvmkit.devices.rtc serves the century there

MADT_PCAT_COMPAT = 1               # a dual 8259 PIC is present (KVM's in-kernel irqchip)
MADT_LAPIC, MADT_IOAPIC, MADT_ISO, MADT_LAPIC_NMI = 0, 1, 2, 4
ISO_ACTIVE_HIGH, ISO_LEVEL = 0x1, 0xC
GAS_SYSTEM_IO = 1
ACCESS_WORD = 2


@dataclass(frozen=True)
class PciRoot:
    """The PCI host bridge as the DSDT describes it.  With ACPI, Linux scans
    only the PCI roots the DSDT names (PNP0A03), not bus 0 by default, so a
    machine with a host bridge at 0xCF8 must declare it here.

    ``intx``: (slot, pin 0-3, GSI) for every INTx pin of the populated
    slots, the ``_PRT`` (kept to the real slots: Linux re-evaluates _PRT for
    each device it enables, and AML is slow when guest kernel code is
    emulated).  The MP table is written from the same list.
    """

    intx: tuple[tuple[int, int, int], ...] = ()
    mmio_start: int = PCI_MMIO_START
    mmio_end: int = PCI_MMIO_END          # exclusive


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` sum to 0 mod 256."""
    return (-sum(data)) & 0xFF


def sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A System Description Table: 36-byte header plus ``body``, checksummed."""
    header = struct.pack("<4sIBB6s8sI4sI", signature, 36 + len(body), revision, 0,
                         OEM_ID, OEM_TABLE_ID, 1, CREATOR_ID, 1)
    table = bytearray(header + body)
    table[9] = checksum(table)
    return bytes(table)


def gas(space: int, bit_width: int, access_size: int, address: int) -> bytes:
    """A Generic Address Structure (12 bytes)."""
    return struct.pack("<BBBBQ", space, bit_width, 0, access_size, address)


def build_rsdp(xsdt_addr: int) -> bytes:
    """RSDP revision 2 (36 bytes): RSDT 0, XSDT 64-bit, both checksums."""
    rsdp = bytearray(struct.pack("<8sB6sBIIQB3x", b"RSD PTR ", 0, OEM_ID, 2, 0, 36, xsdt_addr, 0))
    rsdp[8] = checksum(rsdp[:20])
    rsdp[32] = checksum(rsdp)
    return bytes(rsdp)


def build_xsdt(entries: list[int]) -> bytes:
    return sdt(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in entries))


def build_facs() -> bytes:
    """FACS (64 bytes, no checksum): Linux maps it for the global lock and
    the waking vector on any non-reduced-hardware FADT."""
    # signature, length, hardware signature, waking vector, global lock,
    # flags, X waking vector, version 2, OSPM flags.
    return struct.pack("<4sIIIIIQB3xI24x", b"FACS", 64, 0, 0, 0, 0, 0, 2, 0)


def build_fadt(facs_addr: int, dsdt_addr: int) -> bytes:
    """FADT revision 6 (276 bytes).  SMI_CMD 0: the machine is always in ACPI
    mode (SCI_EN reads 1), so the OS never tries an ACPI-enable handshake.
    No PM timer (optional since ACPI 5.0A; every read would be a VM exit),
    no GPE blocks, no C2/C3 (latencies above the limits)."""
    body = bytearray(276 - 36)

    def put(offset: int, fmt: str, *values: int | bytes) -> None:
        struct.pack_into(fmt, body, offset - 36, *values)

    put(36, "<II", facs_addr, dsdt_addr)
    put(46, "<HI", SCI_IRQ, 0)                                      # SCI_INT, SMI_CMD
    put(56, "<I", PM1_EVT_PORT)
    put(64, "<I", PM1_CNT_PORT)
    put(88, "<BB", PM1_EVT_LEN, PM1_CNT_LEN)
    put(96, "<HH", 0x0FFF, 0x0FFF)                                  # P_LVL2_LAT, P_LVL3_LAT
    put(108, "<BH", CMOS_CENTURY_INDEX, BOOT_LEGACY_DEVICES | BOOT_8042 | BOOT_VGA_NOT_PRESENT)
    put(112, "<I", FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_FIX_RTC)
    put(131, "<B", 0)                                               # FADT minor version: 6.0
    put(140, "<Q", dsdt_addr)                                       # X_DSDT (X_FIRMWARE_CTRL 0)
    put(148, "<12s", gas(GAS_SYSTEM_IO, PM1_EVT_LEN * 8, ACCESS_WORD, PM1_EVT_PORT))
    put(172, "<12s", gas(GAS_SYSTEM_IO, PM1_CNT_LEN * 8, ACCESS_WORD, PM1_CNT_PORT))
    return sdt(b"FACP", 6, bytes(body))


def build_madt(nr_cpus: int) -> bytes:
    """One Local APIC per vCPU (APIC ID = processor UID = index), the IOAPIC
    with id ``nr_cpus`` at GSI base 0, LINT1 as NMI, and one override that
    only restates IRQ 9 as level/active-high for the SCI.  No IRQ 0 -> GSI 2
    override: the MP table and KVM's in-kernel PIT use GSI 0, so ISA IRQs
    0-15 keep mapping to IOAPIC pins 0-15."""
    entries = [struct.pack("<BBBBI", MADT_LAPIC, 8, cpu, cpu, 1) for cpu in range(nr_cpus)]
    entries.append(struct.pack("<BBBBII", MADT_IOAPIC, 12, nr_cpus, 0, IOAPIC_ADDR, 0))
    entries.append(struct.pack("<BBBBIH", MADT_ISO, 10, 0, SCI_IRQ, SCI_IRQ, ISO_ACTIVE_HIGH | ISO_LEVEL))
    entries.append(struct.pack("<BBBHB", MADT_LAPIC_NMI, 6, 0xFF, 0, 1))
    return sdt(b"APIC", 4, struct.pack("<II", LAPIC_ADDR, MADT_PCAT_COMPAT) + b"".join(entries))


def _pci_root_device(pci: PciRoot) -> bytes:
    crs = aml.resource_template(
        aml.word_address(aml.RES_BUS, 0x00, 0xFF),
        aml.io_port(0xCF8, 8),                                       # conf1, consumed by the bridge
        aml.word_address(aml.RES_IO, 0x0000, 0x0CF7, aml.IO_ENTIRE_RANGE),
        aml.word_address(aml.RES_IO, 0x0D00, 0xFFFF, aml.IO_ENTIRE_RANGE),
        aml.dword_memory(pci.mmio_start, pci.mmio_end - 1))
    terms = [aml.name("_HID", aml.eisa_id("PNP0A03")), aml.name("_ADR", aml.integer(0)),
             aml.name("_UID", aml.integer(0)), aml.name("_BBN", aml.integer(0)),
             aml.name("_CRS", crs)]
    if pci.intx:
        # GSI form (source 0): the index is the GSI, level-triggered, active low.
        prt = [aml.package(aml.integer((slot << 16) | 0xFFFF), aml.integer(pin), aml.integer(0),
                           aml.integer(gsi))
               for slot, pin, gsi in pci.intx]
        terms.append(aml.name("_PRT", aml.package(*prt)))
    return aml.device("PCI0", *terms)


def build_dsdt(pci: PciRoot | None = None) -> bytes:
    """``\\_S5`` (SLP_TYP for PM1a and PM1b, two reserved) and, when the
    machine has a PCI host bridge, ``\\_SB.PCI0``."""
    s5 = aml.name("\\_S5", aml.package(aml.integer(SLP_TYP_S5), aml.integer(SLP_TYP_S5),
                                       aml.integer(0), aml.integer(0)))
    sb = aml.scope("\\_SB", _pci_root_device(pci)) if pci is not None else b""
    return sdt(b"DSDT", 2, s5 + sb)


def _align(addr: int, alignment: int) -> int:
    return (addr + alignment - 1) & ~(alignment - 1)


def build_acpi_tables(nr_cpus: int, base: int = TABLES_ADDR, *, rsdp_addr: int = RSDP_ADDR,
                      pci: PciRoot | None = None) -> list[tuple[int, bytes]]:
    """Every table with its guest-physical address: the RSDP at ``rsdp_addr``
    (16-byte aligned, where Linux scans) and the rest from ``base``.  The
    FACS is 64-byte aligned as the spec requires; the others 8-byte."""
    if not 1 <= nr_cpus <= 254:
        raise ValueError(f"ACPI MADT: {nr_cpus} vCPUs (xAPIC IDs allow 1-254)")
    if rsdp_addr % 16 or not 0xE0000 <= rsdp_addr < 0x100000:
        raise ValueError(f"RSDP at {rsdp_addr:#x}: must be 16-byte aligned in 0xE0000-0xFFFFF")
    if rsdp_addr < base < rsdp_addr + 36:
        raise ValueError(f"ACPI tables at {base:#x} overlap the RSDP at {rsdp_addr:#x}")
    dsdt = build_dsdt(pci)
    madt = build_madt(nr_cpus)
    # Layout: FACS first (64-byte aligned), then DSDT, FADT, MADT, XSDT.
    facs_addr = _align(base, 64)
    dsdt_addr = _align(facs_addr + 64, 8)
    fadt_addr = _align(dsdt_addr + len(dsdt), 8)
    madt_addr = _align(fadt_addr + 276, 8)
    xsdt_addr = _align(madt_addr + len(madt), 8)
    fadt = build_fadt(facs_addr, dsdt_addr)
    xsdt = build_xsdt([fadt_addr, madt_addr])
    out = [(rsdp_addr, build_rsdp(xsdt_addr)), (facs_addr, build_facs()), (dsdt_addr, dsdt),
           (fadt_addr, fadt), (madt_addr, madt), (xsdt_addr, xsdt)]
    end = xsdt_addr + len(xsdt)
    if ACPI_REGION[0] <= base < ACPI_REGION[1] < end:
        raise ValueError(f"ACPI tables end at {end:#x}, past the reserved region")
    return out
