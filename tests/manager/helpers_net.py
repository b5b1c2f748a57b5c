"""Domain XML for guests on kvmkit networks."""

from __future__ import annotations

from pathlib import Path


def network_domain_xml(name: str, kernel: Path, network: str, *, initrd: Path | None = None,
                       cmdline: str | None = None, memory_mib: int = 64, serial: str | None = None,
                       mac: str | None = None) -> str:
    """A domain with one NIC on ``network``; ``serial``: a unix socket path for COM1."""
    os_extra = (f"<initrd>{initrd}</initrd>" if initrd else "") + (f"<cmdline>{cmdline}</cmdline>" if cmdline else "")
    com1 = (f"<serial type='unix'><source mode='bind' path='{serial}'/></serial>" if serial
            else "<serial type='pty'/>")
    mac_xml = f"<mac address='{mac}'/>" if mac else ""
    return (f"<domain type='kvm'><name>{name}</name><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64'>hvm</type><kernel>{kernel}</kernel>{os_extra}</os>"
            f"<devices><interface type='network'>{mac_xml}<source network='{network}'/><model type='virtio'/>"
            f"</interface>{com1}</devices></domain>")
