"""Domain XML (``kvmkit virsh define``) is untrusted: well-formedness,
values, and the list of unsupported libvirt features."""

from __future__ import annotations

from pathlib import Path

from kvmkit.errors import KvmkitError
from kvmkit.manager.domain_parse import parse_domain

from fuzz.harness import target

DATA = Path(__file__).resolve().parents[2] / "tests" / "manager" / "data"


def _seeds() -> list[bytes]:
    seeds = [p.read_bytes() for p in sorted(DATA.glob("*.xml"))] if DATA.is_dir() else []
    return seeds + [b"<domain type='kvm'><name>a</name><memory unit='MiB'>64</memory>"
                    b"<os><type>hvm</type><kernel>/k</kernel></os></domain>"]


@target("domain-xml", (KvmkitError,), _seeds)
def domain_xml(data: bytes) -> None:
    """parse_domain on the input, as virsh define reads a file."""
    parse_domain(data)
