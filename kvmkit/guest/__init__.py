"""Guest assets: the kernels and initramfs images kvmkit boots (see :mod:`.assets`)."""

from kvmkit.guest.assets import GuestAssets, cache_dir, fast_guest, stock_guest

__all__ = ["GuestAssets", "cache_dir", "fast_guest", "stock_guest"]
