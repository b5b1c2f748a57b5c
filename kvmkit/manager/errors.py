"""The manager's errors, one class per kind of failure libvirt reports.

Each carries the message virsh would print after ``error:``, prefixed the
way libvirt prefixes its error classes ("Requested operation is not valid:
...", "XML error: ..."), so a script that greps virsh's output keeps
working.  The CLI adds the command's own first line ("Failed to start
domain 'x'") above it, as virsh does.
"""

from __future__ import annotations

from kvmkit.errors import KvmkitError


class ManagerError(KvmkitError):
    """Base: ``str(error)`` is the full line virsh would print after ``error:``."""

    prefix = ""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(f"{self.prefix}{detail}")


class NoDomain(ManagerError):
    prefix = "Domain not found: "


class NoPool(ManagerError):
    prefix = "Storage pool not found: "


class NoVolume(ManagerError):
    prefix = "Storage volume not found: "


class NoSnapshot(ManagerError):
    prefix = "Domain snapshot not found: "


class OperationInvalid(ManagerError):
    """The object is in the wrong state for this (already running, not running...)."""

    prefix = "Requested operation is not valid: "


class OperationFailed(ManagerError):
    prefix = "operation failed: "


class XmlError(ManagerError):
    """The document is not well-formed or a value in it is wrong."""

    prefix = "XML error: "


class Unsupported(ManagerError):
    """Well-formed libvirt XML that asks for something kvmkit does not have.

    ``items`` lists every unsupported element or attribute by its path
    (``devices/graphics``, ``devices/disk/driver@cache=unsafe``), all at once,
    so a user fixes a libvirt-written file in one pass.
    """

    prefix = "unsupported configuration: "

    def __init__(self, items: list[str]) -> None:
        self.items = list(items)
        super().__init__("kvmkit does not support " + ", ".join(self.items))


class NotSupportedYet(ManagerError):
    """A virsh command whose machinery another part of kvmkit has not landed."""

    prefix = "not supported yet: "


class StorageError(ManagerError):
    """A file or directory the manager needs could not be used (the OS's reason)."""


class NoNetwork(ManagerError):
    prefix = "Network not found: "
