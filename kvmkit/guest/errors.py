"""Errors raised while fetching packages or building guest assets.

They subclass :class:`kvmkit.errors.KvmkitError`, so the CLI prints them as
one line. :class:`PackageFetchError` is separate because it is the one a test
may turn into a skip: it means "apt could not reach the archive", not "the
build is broken".
"""

from kvmkit.errors import KvmkitError


class GuestBuildError(KvmkitError):
    """Building a guest kernel or initramfs failed (the message says why)."""


class PackageFetchError(GuestBuildError):
    """apt could not resolve or download a Debian package."""
