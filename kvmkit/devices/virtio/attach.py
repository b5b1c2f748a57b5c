"""The VMM's one call to get its virtio devices: build each device from its
spec, put it on the chosen transport, wire the fast paths (ioeventfd for
queue notify, irqfd for interrupts) and start its I/O thread.

On PCI the devices share one host bridge (created here unless the VMM made
one) and one INTx line for drivers that do not use MSI-X.  On MMIO each
device takes a 4 KiB window and an ISA interrupt and appends its
``virtio_mmio.device=`` argument to the kernel command line.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from kvmkit.devices.context import DeviceContext
from kvmkit.devices.pci.intx import IntxRouter
from kvmkit.devices.pci.host import PciHostBridge, find_host_bridge
from kvmkit.devices.virtio.balloon import VirtioBalloon
from kvmkit.devices.virtio.blk import VirtioBlock, open_backend
from kvmkit.devices.virtio.config import VirtioSpecs, parse_mac
from kvmkit.devices.virtio.console import VirtioConsole
from kvmkit.devices.virtio.device import VirtioDevice
from kvmkit.devices.virtio.mmio import MMIO_SIZE, VirtioMmioTransport
from kvmkit.devices.virtio.net import VirtioNet
from kvmkit.devices.virtio.pci import VirtioPciFunction
from kvmkit.devices.virtio.rng import VirtioRng
from kvmkit.devices.virtio.vsock import VirtioVsock
from kvmkit.errors import ConfigError
from kvmkit.net.tap import Tap

log = logging.getLogger(__name__)


def build_devices(ctx: DeviceContext, specs: VirtioSpecs) -> list[VirtioDevice]:
    """Open every backend and make the devices (not yet on a bus)."""
    devices: list[VirtioDevice] = []
    try:
        for i, d in enumerate(specs.disks):
            image = open_backend(d.path, d.format, d.readonly, d.cache)
            devices.append(VirtioBlock(ctx.memory, f"virtio{i}", image, readonly=d.readonly,
                                       discard=d.discard, serial=d.serial or "", path=d.path,
                                       fmt=getattr(image, "format", d.format or ""),
                                       werror=d.werror, rerror=d.rerror, on_error=ctx.block_error))
        for i, n in enumerate(specs.nets):
            # a handed-over tap (fd=N) was set up by its owner
            tap = Tap.open_for_nic(n.tap, n.bridge) if n.fd is None else Tap.adopt(n.fd)
            devices.append(VirtioNet(ctx.memory, f"net{i}", tap, parse_mac(n.mac) if n.mac else None))
        if specs.console is not None:
            out_fd = 1
            if specs.console.out:
                try:
                    out_fd = os.open(specs.console.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
                except OSError as exc:
                    raise ConfigError(f"--console: cannot open {specs.console.out!r}: {exc.strerror}") from None
            devices.append(VirtioConsole(ctx.memory, "console0", out_fd=out_fd,
                                         owns_out=out_fd != 1))
        if specs.rng:
            devices.append(VirtioRng(ctx.memory, "rng0"))
        if specs.balloon is not None:
            devices.append(VirtioBalloon(ctx.memory, "balloon0", specs.balloon.deflate_on_oom))
        if specs.vsock is not None:
            devices.append(VirtioVsock(ctx.memory, "vsock0", specs.vsock.cid, specs.vsock.uds))
    except BaseException:
        _close_all(devices)
        raise
    return devices


def _close_all(devices: list[VirtioDevice]) -> None:
    for dev in devices:
        try:
            dev.close()
        except Exception:          # closing the rest matters more than this one's error
            log.exception("closing %s", dev.name)


PCI_INTX_GSIS = (20, 21, 22, 23)        # IOAPIC inputs above the ISA range, as QEMU's PIIX/Q35 use


def _pci_bridge(ctx: DeviceContext) -> PciHostBridge:
    bridge = find_host_bridge(ctx.pio_bus)
    if bridge is None:
        bridge = PciHostBridge(ctx.pio_bus, ctx.mmio_bus, ctx.mmio)
    elif bridge.mmio is None:
        bridge.mmio = ctx.mmio
    if bridge.intx is None:
        # Up to four INTx lines, taken from the top of the free IOAPIC inputs
        # (virtio-mmio takes from the bottom).
        gsis = [g for g in PCI_INTX_GSIS if g in ctx.isa_irqs_free] or ctx.isa_irqs_free[-1:]
        if gsis:
            for g in gsis:
                ctx.isa_irqs_free.remove(g)
            bridge.intx = IntxRouter(ctx.irq, gsis)
    return bridge


def attach_device(ctx: DeviceContext, dev: VirtioDevice, transport: str) -> None:
    """Put one built device on ``transport`` and start it."""
    if transport == "pci":
        _pci_bridge(ctx).add(VirtioPciFunction(dev, ctx.irq, ctx.vm))
    else:
        if not ctx.isa_irqs_free:
            raise ConfigError(f"no free interrupt line for virtio-mmio device {dev.name} "
                              "(use --virtio-transport pci for more devices)")
        gsi = ctx.isa_irqs_free.pop(0)
        base = ctx.mmio.allocate(0x1000)
        t = VirtioMmioTransport(dev, base, gsi, ctx.irq, ctx.vm)
        ctx.mmio_bus.register(base, MMIO_SIZE, t)
        ctx.kernel_cmdline.append(t.cmdline)
    dev.start()


def attach_virtio(ctx: DeviceContext, specs: VirtioSpecs) -> list[VirtioDevice]:
    """Build, attach and start every device in ``specs``; the VMM owns the result
    (``close()`` each at shutdown, ``save_state``/``load_state`` each for snapshots)."""
    devices = build_devices(ctx, specs)
    try:
        for dev in devices:
            attach_device(ctx, dev, specs.transport)
    except BaseException:
        _close_all(devices)
        raise
    return devices


def detach(ctx: DeviceContext, dev: VirtioDevice) -> None:
    """Take a device off its bus and close it."""
    t: Any = dev.transport
    bridge = find_host_bridge(ctx.pio_bus)
    if isinstance(t, VirtioPciFunction) and bridge is not None:
        bridge.remove(t)
    elif isinstance(t, VirtioMmioTransport):
        ctx.mmio_bus.unregister(t)
    dev.close()
