"""The libvirt role: domains defined in libvirt's XML and kept in a state
directory, one detached VMM per running domain steered over QMP, storage
pools and volumes, clones and snapshots.  :class:`Host` is the API; the
``kvmkit virsh`` command is a thin layer over it."""

from kvmkit.manager.errors import ManagerError
from kvmkit.manager.host import DomainInfo, Host

__all__ = ["DomainInfo", "Host", "ManagerError"]
