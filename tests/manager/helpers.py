"""Helpers shared by the manager tests."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = Path(__file__).parent / "data"


def tiny_xml(name: str, kernel: Path, *, uuid: str | None = None, disks: tuple[str, ...] = (),
             extra_devices: str = "", memory_mib: int = 64) -> str:
    """A domain running one of tests/guests (idle halts forever, echo echoes COM1)."""
    disk_xml = "".join(
        f"<disk type='file' device='disk'><driver name='qemu' type='{'qcow2' if d.endswith('.qcow2') else 'raw'}'/>"
        f"<source file='{d}'/><target dev='vd{chr(97 + i)}' bus='virtio'/></disk>" for i, d in enumerate(disks))
    return (f"<domain type='kvm'><name>{name}</name>" + (f"<uuid>{uuid}</uuid>" if uuid else "") +
            f"<memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu>"
            f"<os><type arch='x86_64'>hvm</type><kernel>{kernel}</kernel></os>"
            f"<devices>{disk_xml}<serial type='pty'/><console type='pty'/>{extra_devices}</devices></domain>")
