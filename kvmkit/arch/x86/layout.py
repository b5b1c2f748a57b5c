"""Where things go in guest-physical memory on the kvmkit PC.

Low memory follows what Linux's x86 boot code and the MP spec expect; the
values match common practice (Firecracker, kvmtool) so guest kernels see a
familiar machine.
"""

GDT_ADDR = 0x500
IDT_ADDR = 0x520
PVH_INFO_ADDR = 0x6000
ZERO_PAGE_ADDR = 0x7000        # struct boot_params
BOOT_STACK_TOP = 0x8FF0
PML4_ADDR = 0x9000
PDPT_ADDR = 0xA000
PD_ADDR = 0xB000               # 4 page directories: 0xB000-0xEFFF map 4 GiB with 2 MiB pages
CMDLINE_ADDR = 0x20000
CMDLINE_MAX = 0x10000          # 64 KiB; the kernel reports its own limit in cmdline_size
EBDA_START = 0x9FC00           # MP floating pointer + table live here
EBDA_END = 0xA0000
BIOS_START = 0xE0000          # ACPI tables (0xE0000) and the MP table (0xF0000): reserved in e820
BIOS_END = 0x100000
HIMEM_START = 0x100000         # protected-mode kernel (bzImage) loads here

MMIO_HOLE_START = 0xC000_0000  # 3 GiB: PCI MMIO, IOAPIC, LAPIC below 4 GiB
MMIO_HOLE_END = 0x1_0000_0000
IOAPIC_ADDR = 0xFEC0_0000
LAPIC_ADDR = 0xFEE0_0000
PCI_MMIO_START = 0xD000_0000   # 32-bit BARs and virtio-mmio windows
PCI_MMIO_END = 0xFE00_0000
TSS_ADDR = 0xFFFB_D000         # KVM_SET_TSS_ADDR: three pages KVM needs on Intel
IDENTITY_MAP_ADDR = 0xFFFB_C000

PAGE_SIZE = 0x1000


def ram_layout(mem_size: int) -> list[tuple[int, int]]:
    """Guest RAM regions for ``mem_size`` bytes: below the 3 GiB hole, the
    rest above 4 GiB."""
    low = min(mem_size, MMIO_HOLE_START)
    regions = [(0, low)]
    if mem_size > low:
        regions.append((MMIO_HOLE_END, mem_size - low))
    return regions
