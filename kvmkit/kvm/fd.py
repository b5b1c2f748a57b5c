"""The one way kvmkit issues an ioctl: errors become :class:`KvmIoctlError`
with the ioctl's name, so a failure deep in machine setup still says which
request the kernel refused and why."""

from __future__ import annotations

import ctypes as C
import errno
import fcntl
import os

from kvmkit.errors import KvmkitError
from kvmkit.kvm import ioctls

_libc = C.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = (C.c_int, C.c_ulong, C.c_ulong)
_libc.ioctl.restype = C.c_int

_NAMES = {v: k for k, v in vars(ioctls).items() if k.startswith("KVM_") and isinstance(v, int)}


class KvmIoctlError(KvmkitError):
    def __init__(self, request: int, err: int) -> None:
        self.request = request
        self.errno = err
        name = _NAMES.get(request, hex(request))
        super().__init__(f"{name} failed: {os.strerror(err)} (errno {errno.errorcode.get(err, err)})")


class KvmFd:
    """Owner of one KVM file descriptor (system, VM or vCPU)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def ioctl(self, request: int, arg: int | C.Structure | C.Array | bytearray = 0) -> int:
        """Issue ``request``; a ctypes ``arg`` is passed by reference and
        updated in place for read/write requests."""
        try:
            if isinstance(arg, int):
                if 0 <= arg < 1 << 31:
                    return fcntl.ioctl(self.fd, request, arg)
                # fcntl.ioctl takes a C int; some requests take an unsigned long
                ret = _libc.ioctl(self.fd, request, arg)
                if ret < 0:
                    raise OSError(C.get_errno(), os.strerror(C.get_errno()))
                return ret
            return fcntl.ioctl(self.fd, request, arg, True)
        except OSError as e:
            raise KvmIoctlError(request, e.errno) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
