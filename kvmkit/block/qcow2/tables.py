"""L1/L2 entries: what a guest cluster maps to, and the compressed descriptor.

Kept apart from the I/O code so that check, snapshots and the image share
one decoding of the bits (and one place that rejects malformed entries).
"""

from __future__ import annotations

from array import array

from kvmkit.block.image import Kind
from kvmkit.errors import ImageError

COPIED = 1 << 63
COMPRESSED = 1 << 62
ZERO_FLAG = 1
OFFSET_MASK = 0x00FFFFFFFFFFFE00
L1_RESERVED = 0x7F000000000001FF
L2_RESERVED = 0x3F000000000001FE


def new_table(entries: int) -> array:
    return array("Q", bytes(entries * 8))


def classify(entry: int, version: int) -> tuple[Kind, int]:
    """(kind, host cluster offset) of an L2 entry; host is 0 when there is none."""
    if entry & COMPRESSED:
        return Kind.COMPRESSED, 0
    host = entry & OFFSET_MASK
    if version >= 3 and entry & ZERO_FLAG:
        return Kind.ZERO, host
    if host == 0:
        return Kind.UNALLOCATED, 0
    return Kind.DATA, host


class CompressedCodec:
    """The compressed cluster descriptor: host byte offset and sector count."""

    def __init__(self, cluster_bits: int) -> None:
        self.cluster_bits = cluster_bits
        self.shift = 62 - (cluster_bits - 8)
        self.offset_mask = (1 << self.shift) - 1
        self.sectors_mask = (1 << (cluster_bits - 8)) - 1

    def decode(self, entry: int) -> tuple[int, int]:
        """(host byte offset, bytes to read) of a compressed cluster."""
        host = entry & self.offset_mask & OFFSET_MASK_56
        nsectors = ((entry >> self.shift) & self.sectors_mask) + 1
        return host, nsectors * 512 - (host & 511)

    def encode(self, host: int, length: int) -> int:
        extra = ((host + length - 1) >> 9) - (host >> 9)
        if extra > self.sectors_mask:
            raise ImageError("compressed cluster is too large for its descriptor")
        return COMPRESSED | (extra << self.shift) | host

    def clusters(self, entry: int) -> range:
        """Host cluster indices a compressed cluster's bytes touch."""
        host, length = self.decode(entry)
        start = host & ~511
        end = (host + length - 1) | 511    # sectors are read whole
        return range(start >> self.cluster_bits, (end >> self.cluster_bits) + 1)


OFFSET_MASK_56 = (1 << 56) - 1


def check_host_offset(host: int, cluster_size: int, what: str) -> None:
    if host & (cluster_size - 1):
        raise ImageError(f"{what} points to host offset {host:#x}, which is not aligned "
                         "to a cluster (the image is corrupt)")
