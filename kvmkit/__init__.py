"""kvmkit: the user-space half of a KVM virtualization stack, in Python.

    import kvmkit
    with kvmkit.VM(kernel="vmlinux", initrd="initrd.cpio", cpus=2) as vm:
        vm.console.expect("Run /init")
        vm.save_snapshot("snap")
    with kvmkit.VM.restore("snap", clone=True) as copy:     # milliseconds, not a boot
        ...

:class:`VM` is :class:`kvmkit.vmm.machine.Machine` built from keyword
arguments (see :class:`kvmkit.vmm.config.VmConfig`).  ``kvmkit.Host(state_dir)``
is the manager (libvirt's role): defined domains, each run by its own VMM.
"""

from __future__ import annotations

__version__ = "0.1.0"


class VM:
    """Build (not yet start) a VM; ``with`` starts it and closes it after.

    ``kvmkit.VM(...)`` returns a :class:`kvmkit.vmm.machine.Machine`.
    Without ``kernel`` the project's fast guest is used (built on first use).
    """

    def __new__(cls, kernel=None, **kwargs):
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

    @staticmethod
    def restore(directory, *, clone=False, clone_dir=None, shared=False, serial="buffer", **overrides):
        """A machine continuing the snapshot in ``directory`` (``kvmkit snapshot
        create``, QMP ``kvmkit-snapshot-save``, ``Machine.save_snapshot``); not
        started: ``with`` or ``start()`` runs it.  RAM is mapped copy-on-write
        (``shared=True`` writes it back to the snapshot).  ``clone=True`` (or
        a ``clone_dir``) makes an independent copy: linked-clone disks, new
        MACs, vsock CID and sockets (:mod:`kvmkit.vmm.clone`), so one
        snapshot can run many times at once.  ``overrides`` replace config
        fields (``start_paused=True``, ``name=``...)."""
        from kvmkit.vmm.config import SerialSpec
        from kvmkit.vmm.machine import Machine
        if isinstance(serial, str):
            serial = SerialSpec.parse(serial)
        if clone or clone_dir is not None:
            from kvmkit.vmm import clone as _clone
            if shared:
                from kvmkit.errors import ConfigError
                raise ConfigError("a clone cannot write the snapshot's memory back (shared): clones share it")
            return _clone.restore(directory, clone_dir, serial=serial, **overrides)
        return Machine.restore(directory, shared_memory=shared, serial=serial, **overrides)


def __getattr__(name: str):
    # kvmkit.Host without importing the manager for every `import kvmkit`
    if name == "Host":
        from kvmkit.manager import Host
        return Host
    raise AttributeError(f"module 'kvmkit' has no attribute {name!r}")


__all__ = ["Host", "VM", "__version__"]
