"""Exceptions that carry a message a user can act on.

Every layer raises a subclass of :class:`KvmkitError` at the boundary that can
explain the problem; the CLI prints ``str(error)`` on one line and exits
non-zero, so messages must name the thing that is wrong (a path, a size, a
limit) rather than describe the internal state that noticed it.
"""


class KvmkitError(Exception):
    """Base of all errors a user is meant to read."""


class ConfigError(KvmkitError):
    """A VM configuration that cannot be built (bad size, missing file...)."""


class KvmUnavailableError(KvmkitError):
    """/dev/kvm is missing, not permitted, or lacks a required capability."""


class GuestMemoryError(KvmkitError):
    """A guest-physical range that falls outside guest RAM.

    Guest addresses are untrusted input: devices catch this and fail the
    request (or mark the device broken) instead of crashing the VMM.
    """


class ImageError(KvmkitError):
    """A disk image that is malformed, unsupported or cannot be opened."""


class GuestError(KvmkitError):
    """The guest stopped in a way the VMM cannot continue from."""


class HostResourceError(KvmkitError):
    """The host would not give the VMM something it needs (guest RAM, a device
    node, a socket, a file).  The message names the resource and the host's
    reason, so ``kvmkit run -m 100T`` says "guest RAM: cannot map 100 TiB"
    instead of a traceback from ``mmap``."""


def host_error(what: str, exc: OSError) -> HostResourceError:
    """``what``: the thing that could not be had, as the user named it
    (``--vsock uds=/x``, ``guest RAM (100 TiB)``); the reason is the errno text."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return HostResourceError(f"{what}: {reason}")


def describe_host_error(e: BaseException) -> str:
    """An ``OSError`` or ``MemoryError`` no boundary explained, as one line:
    the reason, then the file (the CLI's last resort before a traceback)."""
    if isinstance(e, MemoryError):
        return "out of memory"
    name = f": {e.filename}" if isinstance(e, OSError) and e.filename else ""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
    return f"{reason}{name}"
