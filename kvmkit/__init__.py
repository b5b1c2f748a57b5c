"""kvmkit: the user-space half of a KVM virtualization stack, in Python.

    import kvmkit
    with kvmkit.VM(kernel="vmlinux", initrd="initrd.cpio", cpus=2) as vm:
        vm.console.expect("Run /init")

:class:`VM` is :class:`kvmkit.vmm.machine.Machine` built from keyword
arguments (see :class:`kvmkit.vmm.config.VmConfig`).  ``kvmkit.Host(state_dir)``
is the manager (libvirt's role): defined domains, each run by its own VMM.
"""

from __future__ import annotations

__version__ = "0.1.0"


def VM(kernel=None, **kwargs):
    """Build (not yet start) a VM; ``with`` starts it and closes it after.

    Without ``kernel`` the project's fast guest is used (built on first use).
    """
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine
    if kernel is None:
        from kvmkit.guest.assets import fast_guest
        g = fast_guest()
        kernel = g.vmlinux
        kwargs.setdefault("initrd", g.initrd)
        kwargs.setdefault("cmdline", g.cmdline)
        kwargs.setdefault("memory", g.memory)
    return Machine(VmConfig.build(kernel, **kwargs))


def __getattr__(name: str):
    # kvmkit.Host without importing the manager for every `import kvmkit`
    if name == "Host":
        from kvmkit.manager import Host
        return Host
    raise AttributeError(f"module 'kvmkit' has no attribute {name!r}")


__all__ = ["Host", "VM", "__version__"]
