"""The fast paths registered with a real VM: ioeventfd per queue, MSI-X
routes plus irqfd, and the mmio irqfd — every device on both transports."""

from __future__ import annotations

import os

import pytest

from kvmkit.devices.bus import Bus
from kvmkit.devices.context import DeviceContext, MmioAllocator
from kvmkit.devices.virtio.attach import attach_virtio, detach
from kvmkit.devices.virtio.config import (
    BalloonSpec, ConsoleSpec, DiskSpec, VirtioSpecs, VsockSpec)
from kvmkit.memory.guest_memory import GuestMemory

from .pci_driver import VirtioPciDriver, find_slot

pytestmark = pytest.mark.kvm


@pytest.fixture
def vm_ctx():
    from kvmkit.kvm import Kvm
    from kvmkit.vmm.interrupts import KvmInterruptController
    import ctypes
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.create_irqchip()
    mem = GuestMemory.anonymous([(0, 16 << 20)])
    r = mem.regions[0]
    vm.set_user_memory_region(0, 0, r.size, ctypes.addressof(ctypes.c_char.from_buffer(r.mapping)))
    ctx = DeviceContext(memory=mem, pio_bus=Bus("pio"), mmio_bus=Bus("mmio"),
                        irq=KvmInterruptController(vm), vm=vm, mmio=MmioAllocator(0xD000_0000, 0xE000_0000))
    yield ctx
    vm.close()
    kvm.close()


@pytest.mark.parametrize("transport", ["pci", "mmio"])
def test_attach_every_device(vm_ctx, tmp_path, transport):
    img = tmp_path / "d.raw"
    img.write_bytes(bytes(1 << 20))
    specs = VirtioSpecs(transport=transport, disks=(DiskSpec(str(img)),),
                        console=ConsoleSpec(str(tmp_path / "console.log")), rng=True,
                        balloon=BalloonSpec(),
                        vsock=VsockSpec(3, str(tmp_path / "v.sock")))
    devices = attach_virtio(vm_ctx, specs)
    try:
        kinds = ["virtio-blk", "virtio-console", "virtio-rng", "virtio-balloon", "virtio-vsock"]
        assert [d.kind for d in devices] == kinds[:len(devices)]
        if transport == "mmio":     # free ISA lines first, then IOAPIC pins 16-23
            assert len(vm_ctx.kernel_cmdline) == 5
            assert [c.rsplit(":", 1)[1] for c in vm_ctx.kernel_cmdline] == ["5", "9", "10", "11", "16"]
        else:
            drv = VirtioPciDriver(vm_ctx, find_slot(vm_ctx.pio_bus, 0x1AF4, 0x1042))
            drv.enable_msix()
            drv.program_vector(0, 0xFEE00000, 0x31)       # KVM_SET_GSI_ROUTING + KVM_IRQFD
            drv.program_vector(1, 0xFEE00000, 0x32)
            # Moving the BAR moves the ioeventfds (deassign + assign must both succeed).
            cmd = drv.cfg.read(4, 2)
            drv.cfg.write(4, 2, cmd & ~2)
            drv.cfg.write(0x10, 4, 0xD800_0000)
            drv.cfg.write(0x14, 4, 0)
            drv.cfg.write(4, 2, cmd)
            assert vm_ctx.mmio_bus.find(0xD800_0000) is not None
            assert devices[0].query()["bar0"] == 0xD800_0000
        for d in devices:
            assert isinstance(d.save_state(), dict)
    finally:
        for d in devices:
            detach(vm_ctx, d)
    assert not os.path.exists(tmp_path / "v.sock")


def test_mmio_runs_out_of_irqs(vm_ctx, tmp_path):
    from kvmkit.errors import ConfigError
    vm_ctx.isa_irqs_free = [5]
    with pytest.raises(ConfigError, match="interrupt line"):
        attach_virtio(vm_ctx, VirtioSpecs(transport="mmio", rng=True, balloon=BalloonSpec()))
