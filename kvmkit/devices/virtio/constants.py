"""Numbers from the virtio 1.2 specification that more than one module needs.

Kept in one place so the transports, the core and the devices agree on them;
device-specific feature bits live with their device.
"""

from __future__ import annotations

import enum


class Status(enum.IntFlag):
    """Device status bits (virtio 1.2 §2.1)."""

    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    DEVICE_NEEDS_RESET = 0x40
    FAILED = 0x80


class DeviceId(enum.IntEnum):
    """Virtio device IDs (virtio 1.2 §5)."""

    NET = 1
    BLOCK = 2
    CONSOLE = 3
    RNG = 4
    BALLOON = 5
    VSOCK = 19


# Reserved feature bits (virtio 1.2 §6).
F_INDIRECT_DESC = 28
F_EVENT_IDX = 29
F_VERSION_1 = 32
F_ACCESS_PLATFORM = 33
F_RING_PACKED = 34

# Descriptor flags.
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4

# Ring flags.
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1

MAX_QUEUE_SIZE = 32768

# Interrupt status bits (ISR for PCI, InterruptStatus for MMIO).
ISR_QUEUE = 1
ISR_CONFIG = 2

NO_VECTOR = 0xFFFF


def bit(n: int) -> int:
    return 1 << n
