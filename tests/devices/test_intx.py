"""Legacy INTx for virtio-pci against a real in-kernel irqchip: the pin each
function reports, the IOAPIC input it drives (read back from KVM's IOAPIC),
level assert on completion, deassert on the ISR read, Interrupt Disable, and
one routing table behind config space, the MP table and the ACPI _PRT.
The Linux side (``pci=nomsi``) is tests/e2e/test_intx_guest.py."""

from __future__ import annotations

import ctypes
import re
import shutil
import struct
import subprocess
import threading
import time

import pytest

from kvmkit.arch.x86.mptable import MPTABLE_ADDR
from kvmkit.devices.bus import Bus
from kvmkit.devices.context import DeviceContext, MmioAllocator
from kvmkit.devices.pci.intx import IntxRouter
from kvmkit.devices.virtio.attach import attach_device
from kvmkit.devices.virtio.blk import VirtioBlock, open_backend
from kvmkit.devices.virtio.config import DiskSpec, VirtioSpecs
from kvmkit.memory.guest_memory import GuestMemory

from .helpers import FakeIrq
from .pci_driver import ConfigSpace, VirtioPciDriver, blk_header, find_slot

pytestmark = pytest.mark.kvm

IOAPIC = 2                                  # KVM_IRQCHIP_IOAPIC
IRR_OFF, REDIR_OFF = 16, 24                 # struct kvm_ioapic_state
POLARITY_LOW, LEVEL, MASKED = 1 << 13, 1 << 15, 1 << 16


@pytest.fixture
def vm():
    from kvmkit.kvm import Kvm
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.create_irqchip()
    yield vm
    vm.close()
    kvm.close()


def irr(vm) -> int:
    chip = vm.get_irqchip(IOAPIC)
    return struct.unpack_from("<I", bytes(chip.chip), IRR_OFF)[0]


def program_pin(vm, pin: int, entry: int) -> None:
    chip = vm.get_irqchip(IOAPIC)
    raw = bytearray(chip.chip)
    struct.pack_into("<Q", raw, REDIR_OFF + 8 * pin, entry)
    ctypes.memmove(chip.chip, bytes(raw), len(raw))
    vm.set_irqchip(chip)


@pytest.mark.parametrize("polarity", [0, POLARITY_LOW], ids=["active-high", "active-low"])
def test_kvm_ioapic_takes_level_1_as_asserted_whatever_the_polarity(vm, polarity):
    """Settles the polarity question: the guest programs the pin active low
    (the _PRT's GSI form and our MP table say so); KVM_IRQ_LINE 1 must still
    be 'asserted' and 0 'deasserted'.  If KVM applied the polarity, 1 would
    read as idle here and INTx guests would see a stuck-high line."""
    program_pin(vm, 21, 0x30 | polarity | LEVEL | MASKED)   # masked: nothing delivered, IRR still latches
    assert not irr(vm) & (1 << 21)
    vm.irq_line(21, 1)
    assert irr(vm) & (1 << 21)
    vm.irq_line(21, 0)
    assert not irr(vm) & (1 << 21)


@pytest.fixture
def blk_ctx(vm, tmp_path):
    from kvmkit.vmm.interrupts import KvmInterruptController
    mem = GuestMemory.anonymous([(0, 16 << 20)])
    r = mem.regions[0]
    vm.set_user_memory_region(0, 0, r.size, ctypes.addressof(ctypes.c_char.from_buffer(r.mapping)))
    ctx = DeviceContext(memory=mem, pio_bus=Bus("pio"), mmio_bus=Bus("mmio"),
                        irq=KvmInterruptController(vm), vm=vm, mmio=MmioAllocator(0xD000_0000, 0xE000_0000))
    devs = []
    for i in range(2):
        path = tmp_path / f"d{i}.raw"
        path.write_bytes(bytes([0x41 + i]) * (1 << 20))
        dev = VirtioBlock(mem, f"vd{i}", open_backend(str(path), "raw", False), path=str(path), fmt="raw")
        attach_device(ctx, dev, "pci")
        devs.append(dev)
    yield ctx, devs
    for d in devs:
        d.close()


def intx_driver(ctx, slot):
    """Linux's vp_find_vqs_intx: no MSI-X, queue vector NO_VECTOR."""
    drv = VirtioPciDriver(ctx, slot)
    drv.negotiate()
    ring = drv.setup_queue(0, 0x10000 + slot * 0x10000, vector=0xFFFF)
    drv.driver_ok()
    return drv, ring


def read_sector(ctx, drv, ring):
    mem = ctx.memory
    mem.write(0x200000, blk_header(0, 0))                  # VIRTIO_BLK_T_IN, sector 0
    mem.write_u8(0x300000, 0xFF)
    ring.add([(0x200000, 16, False), (0x280000, 512, True), (0x300000, 1, True)])
    drv.kick(0)
    ring.wait_used(1)
    return mem.read(0x280000, 512)


def test_completion_asserts_the_pin_and_the_isr_read_deasserts(blk_ctx, vm):
    ctx, devs = blk_ctx
    slots = [s for s in range(1, 32) if ConfigSpace(ctx.pio_bus, s).read(0, 2) == 0x1AF4]
    assert len(slots) == 2
    lines = set()
    for slot in slots:
        cfg = ConfigSpace(ctx.pio_bus, slot)
        pin, gsi = cfg.read(0x3D, 1), cfg.read(0x3C, 1)
        assert pin == 1                                    # INTA#
        assert gsi == 20 + slot % 4                        # swizzled onto the PCI lines 20-23
        lines.add(gsi)
        program_pin(vm, gsi, 0x30 | POLARITY_LOW | LEVEL | MASKED)
        drv, ring = intx_driver(ctx, slot)
        assert not irr(vm) & (1 << gsi) and not cfg.read(0x06, 2) & 0x08
        assert read_sector(ctx, drv, ring) == bytes([0x41 + slots.index(slot)]) * 512
        wait = time.monotonic() + 5
        while not irr(vm) & (1 << gsi):
            assert time.monotonic() < wait, "INTx never asserted"
        assert cfg.read(0x06, 2) & 0x08                    # Status.Interrupt Status
        # Interrupt Disable drops the line but keeps the status; clearing it re-asserts.
        cmd = cfg.read(0x04, 2)
        cfg.write(0x04, 2, cmd | 0x400)
        assert not irr(vm) & (1 << gsi) and cfg.read(0x06, 2) & 0x08
        cfg.write(0x04, 2, cmd)
        assert irr(vm) & (1 << gsi)
        isr = drv.mmio_read(drv.regions[3], 1)
        assert isr == 1                                    # queue interrupt
        assert not irr(vm) & (1 << gsi) and not cfg.read(0x06, 2) & 0x08
        assert drv.mmio_read(drv.regions[3], 1) == 0       # read-to-clear
    assert len(lines) == 2                                 # neighbours do not share a line


def test_shared_line_stays_high_while_any_function_asserts():
    irq = FakeIrq()
    router = IntxRouter(irq, [22])
    a, b = router.connect(1, "a"), router.connect(5, "b")
    line = irq.lines[22]
    a.set_level(True)
    b.set_level(True)
    a.set_level(False)
    assert line.level
    b.set_level(False)
    assert not line.level


def test_concurrent_assert_and_deassert_never_leave_the_line_wrongly_high():
    """Two functions on one line toggling from two threads: the line must end
    exactly as the OR of their final levels (a stuck-high line is an
    interrupt storm the guest answers by disabling the IRQ)."""
    irq = FakeIrq()
    router = IntxRouter(irq, [20])
    pins = [router.connect(0, "x"), router.connect(4, "y")]

    def toggle(p):
        for _ in range(20000):
            p.set_level(True)
            p.set_level(False)

    threads = [threading.Thread(target=toggle, args=(p,)) for p in pins]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert irq.lines[20].level is False


def test_router_refuses_bad_wiring():
    with pytest.raises(ValueError):
        IntxRouter(FakeIrq(), [])
    with pytest.raises(ValueError):
        IntxRouter(FakeIrq(), [20, 20])
    with pytest.raises(ValueError):
        IntxRouter(FakeIrq(), [20]).gsi(1, 4)


def _mp_pci_routes(mem) -> set[tuple[int, int, int]]:
    fp = mem.read(MPTABLE_ADDR, 16)
    table = struct.unpack_from("<I", fp, 4)[0]
    hdr = mem.read(table, 44)
    length, count = struct.unpack_from("<H", hdr, 4)[0], struct.unpack_from("<H", hdr, 34)[0]
    body, off, out = mem.read(table + 44, length - 44), 0, set()
    sizes = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}
    for _ in range(count):
        kind = body[off]
        if kind == 3:
            _, _, flags, bus, src, _, dst = struct.unpack_from("<BBHBBBB", body, off)
            if bus == 1:
                assert flags == 0xF                        # level, active low
                out.add((src >> 2, src & 3, dst))
        off += sizes[kind]
    return out


@pytest.mark.skipif(shutil.which("iasl") is None, reason="iasl (acpica-tools) not installed")
def test_config_space_mp_table_and_prt_agree(tiny_guest, machine, tmp_path):
    disks = []
    for i in range(3):
        p = tmp_path / f"{i}.raw"
        p.write_bytes(bytes(1 << 20))
        disks.append(DiskSpec(str(p), "raw"))
    m = machine(tiny_guest("idle"), start=False, virtio=VirtioSpecs(disks=tuple(disks)))
    cfg_routes = set()
    for slot in range(1, 32):
        cs = ConfigSpace(m.pio_bus, slot)
        if cs.read(0, 2) == 0x1AF4:
            cfg_routes.add((slot, cs.read(0x3D, 1) - 1, cs.read(0x3C, 1)))
    assert len(cfg_routes) == 3
    mp = _mp_pci_routes(m.memory)
    assert cfg_routes <= mp
    # The DSDT as iasl reads it: every _PRT package is (slot<<16|0xFFFF, pin, 0, gsi).
    from kvmkit.arch.x86 import acpi
    rsdp = m.memory.read(acpi.RSDP_ADDR, 36)
    xsdt = struct.unpack_from("<Q", rsdp, 24)[0]
    n = struct.unpack_from("<I", m.memory.read(xsdt, 8), 4)[0]
    for (addr,) in struct.iter_unpack("<Q", m.memory.read(xsdt + 36, n - 36)):
        t = m.memory.read(addr, 8)
        if t[:4] == b"FACP":
            dsdt = struct.unpack_from("<I", m.memory.read(addr, 48), 40)[0]
    length = struct.unpack_from("<I", m.memory.read(dsdt, 8), 4)[0]
    (tmp_path / "DSDT.dat").write_bytes(m.memory.read(dsdt, length))
    r = subprocess.run(["iasl", "-d", "DSDT.dat"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    dsl = (tmp_path / "DSDT.dsl").read_text()
    prt = set()
    for addr, pin, src, gsi in re.findall(
            r"Package \(0x04\)\s*\{\s*(0x[0-9A-F]+),\s*(0x[0-9A-F]+|Zero|One),\s*(Zero|0x00),\s*(0x[0-9A-F]+)", dsl):
        pin_n = {"Zero": 0, "One": 1}.get(pin, None)
        prt.add((int(addr, 16) >> 16, pin_n if pin_n is not None else int(pin, 16), int(gsi, 16)))
    assert prt == mp
    assert cfg_routes <= prt
