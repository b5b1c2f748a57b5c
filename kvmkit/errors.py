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
