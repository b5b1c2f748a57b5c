"""Disk images (raw, qcow2) for the VMM's block devices and the ``img`` CLI.

The VMM needs only :func:`open_image` and the :class:`BlockImage` calls
(``pread``/``preadv``/``pwrite``/``pwritev``/``flush``/``discard``/
``write_zeroes``/``close``); everything else serves ``kvmkit img``.
"""

from kvmkit.block.image import BlockImage, Extent, Kind, open_image
from kvmkit.block.create import create_image

__all__ = ["BlockImage", "Extent", "Kind", "create_image", "open_image"]
