"""Tap devices through /dev/net/tun: create or open one by name with
``IFF_TAP | IFF_NO_PI | IFF_VNET_HDR``, so every frame carries a
``virtio_net_hdr`` and virtio-net can pass frames (with checksum and TSO
offloads) between the tap and guest memory without touching them.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct

from kvmkit.errors import ConfigError, host_error

TUN_PATH = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN = 0x01, 0x02, 0x04, 0x08
SIOCGIFFLAGS, SIOCSIFFLAGS, SIOCSIFMTU = 0x8913, 0x8914, 0x8922
SIOCBRADDIF = 0x89A2
IFF_UP = 0x1
IFNAMSIZ = 16
VNET_HDR_SIZE = 12          # virtio_net_hdr_v1 (with num_buffers), as VIRTIO_F_VERSION_1 requires


def _ifreq(name: str, flags: int = 0) -> bytes:
    return struct.pack(f"{IFNAMSIZ}sH22x", name.encode(), flags)


class Tap:
    """An open tap: ``fd`` is non-blocking; the interface lives while it is open
    unless it was made persistent by someone else (``ip tuntap add``)."""

    def __init__(self, fd: int, name: str, vnet_hdr: bool) -> None:
        self.fd, self.name, self.vnet_hdr = fd, name, vnet_hdr

    @classmethod
    def open(cls, name: str | None = None, vnet_hdr: bool = True) -> "Tap":
        """Open tap ``name`` (created if absent); no name → the kernel picks ``kvmtapN``."""
        if name is not None and (not name or len(name.encode()) >= IFNAMSIZ or "/" in name):
            raise ConfigError(f"tap name {name!r} must be 1-15 characters without '/'")
        try:
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise ConfigError(f"cannot open {TUN_PATH}: {exc.strerror} (is the tun module loaded, are you root?)") from None
        flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        try:
            res = fcntl.ioctl(fd, TUNSETIFF, _ifreq(name or "kvmtap%d", flags))
            actual = res[:IFNAMSIZ].rstrip(b"\0").decode()
            if vnet_hdr:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
        except OSError as exc:
            os.close(fd)
            raise ConfigError(f"cannot attach tap {name or '(new)'}: {exc.strerror} "
                              "(busy, wrong type, or not permitted)") from None
        return cls(fd, actual, vnet_hdr)

    @classmethod
    def open_for_nic(cls, name: str | None, bridge: str | None) -> "Tap":
        """A NIC's tap ready for traffic: opened (created if ``name`` is None
        or absent), then a port of ``bridge`` and up, or just up if kvmkit
        created it; a tap the user named and left unbridged is theirs to set
        up.  Closed again if that fails."""
        tap = cls.open(name)
        if name is None or bridge:
            try:
                tap.join_bridge(bridge) if bridge else tap.set_up()
            except BaseException:
                tap.close()
                raise
        return tap

    @classmethod
    def adopt(cls, fd: int) -> "Tap":
        """A tap someone else opened and handed over by descriptor (a jail's
        supervisor: the jailed VMM has no /dev/net/tun and no interfaces)."""
        try:
            res = fcntl.ioctl(fd, TUNGETIFF, _ifreq(""))
        except OSError as exc:
            raise ConfigError(f"--net fd={fd}: not an open tap: {exc.strerror}") from None
        name = res[:IFNAMSIZ].rstrip(b"\0").decode()
        flags = struct.unpack_from("H", res, IFNAMSIZ)[0]
        os.set_blocking(fd, False)
        return cls(fd, name, bool(flags & IFF_VNET_HDR))

    def set_offload(self, flags: int) -> None:
        """Which offloads the tap may hand us (TUN_F_*; 0 = plain frames)."""
        fcntl.ioctl(self.fd, TUNSETOFFLOAD, flags)

    def set_up(self, up: bool = True) -> None:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                res = fcntl.ioctl(s, SIOCGIFFLAGS, _ifreq(self.name))
                flags = struct.unpack_from("H", res, IFNAMSIZ)[0]
                flags = flags | IFF_UP if up else flags & ~IFF_UP
                fcntl.ioctl(s, SIOCSIFFLAGS, _ifreq(self.name, flags))
        except OSError as exc:
            raise host_error(f"tap {self.name}: cannot set it {'up' if up else 'down'}", exc) from None

    def join_bridge(self, bridge: str) -> None:
        """Make this tap a port of ``bridge`` and bring it up (``kvmkit run
        --net bridge=NAME``; the manager's networks use it too).  The port
        goes when the tap does, so a VMM that dies leaves no port behind.
        An ioctl (brctl's ``SIOCBRADDIF``), not netlink: the VMM needs
        nothing more for it."""
        if not bridge or len(bridge.encode()) >= IFNAMSIZ or "/" in bridge:
            raise ConfigError(f"bridge name {bridge!r} must be 1-15 characters without '/'")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                index = socket.if_nametoindex(self.name)
                fcntl.ioctl(s, SIOCBRADDIF, struct.pack(f"{IFNAMSIZ}si20x", bridge.encode(), index))
        except OSError as exc:
            hint = {19: "no such bridge", 95: "not a bridge", 22: "not a bridge"}.get(exc.errno, exc.strerror)
            raise ConfigError(f"cannot add tap {self.name} to bridge {bridge!r}: {hint}") from None
        self.set_up()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __repr__(self) -> str:
        return f"Tap({self.name!r}, fd={self.fd})"
