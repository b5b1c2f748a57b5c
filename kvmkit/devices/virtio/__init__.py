"""Virtio: the core (split virtqueues, features, status, reset), the PCI and
MMIO transports, and the blk, net, console, rng, balloon and vsock devices.

The VMM's entry points are :func:`attach_virtio` and the spec parsers in
:mod:`kvmkit.devices.virtio.config`.
"""

from kvmkit.devices.virtio.config import (
    BalloonSpec, ConsoleSpec, DiskSpec, NetSpec, VirtioSpecs, VsockSpec, parse_balloon,
    parse_console, parse_disk, parse_net, parse_transport, parse_vsock)
from kvmkit.devices.virtio.device import VirtioDevice


def attach_virtio(ctx, specs):  # noqa: ANN001 - re-exported lazily (it imports every device)
    from kvmkit.devices.virtio.attach import attach_virtio as _attach
    return _attach(ctx, specs)


__all__ = ["BalloonSpec", "ConsoleSpec", "DiskSpec", "NetSpec", "VirtioDevice", "VirtioSpecs",
           "VsockSpec", "attach_virtio", "parse_balloon", "parse_console", "parse_disk",
           "parse_net", "parse_transport", "parse_vsock"]
