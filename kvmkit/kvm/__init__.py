"""Thin, typed bindings to /dev/kvm: one class per file descriptor
(:class:`Kvm`, :class:`Vm`, :class:`Vcpu`), one method per ioctl, no policy."""

from kvmkit.kvm.constants import Cap, Exit
from kvmkit.kvm.fd import KvmIoctlError
from kvmkit.kvm.system import Kvm
from kvmkit.kvm.vcpu import Vcpu
from kvmkit.kvm.vm import Vm, eventfd

__all__ = ["Cap", "Exit", "Kvm", "KvmIoctlError", "Vcpu", "Vm", "eventfd"]
