"""Network backends for virtio-net: tap devices."""

from kvmkit.net.tap import Tap

__all__ = ["Tap"]
