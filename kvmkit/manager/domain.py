"""A domain definition as data: the subset of libvirt's domain schema that
kvmkit runs, frozen and validated (see :mod:`domain_parse` for reading it
from XML and :mod:`domain_xml` for writing it back).

Sizes are bytes; paths are absolute; a MAC address is lower-case.  Values a
libvirt document may leave out are filled in at parse time the way libvirt
fills them (a new UUID, a generated MAC), so what is stored is complete and
``dumpxml`` shows the same thing every time.
"""

from __future__ import annotations

import dataclasses
import random
import uuid as _uuid
from dataclasses import dataclass, field

from kvmkit.manager.tuning import DomainTuning

MAC_PREFIX = "52:54:00"          # the locally administered prefix libvirt and QEMU use


#: libvirt's <driver cache=...> modes; ``default`` is stored as no mode (the VMM's writeback).
CACHE_MODES = ("default", "none", "writethrough", "writeback", "directsync", "unsafe")
#: libvirt's <driver error_policy=...>; rerror_policy takes the first three.
ERROR_POLICIES = ("stop", "report", "ignore", "enospace")


@dataclass(frozen=True)
class Disk:
    source: str                   # the image file
    target: str                   # vda, vdb, ...: the order the guest sees them in
    format: str = "raw"           # raw | qcow2 (libvirt's default without <driver type>)
    readonly: bool = False
    cache: str | None = None      # none | writeback | writethrough | directsync | unsafe
    discard: str | None = None    # unmap | ignore
    serial: str | None = None
    error_policy: str | None = None    # what a failed write does: stop | report | ignore | enospace
    rerror_policy: str | None = None   # what a failed read does: stop | report | ignore

    @property
    def writable(self) -> bool:
        return not self.readonly


@dataclass(frozen=True)
class Interface:
    type: str                     # ethernet | bridge | network
    mac: str
    source: str | None = None     # the bridge or network name
    target: str | None = None     # the tap device name (created if absent)


@dataclass(frozen=True)
class CharDev:
    """COM1's host side: a pty (virsh console), a file, or a listening socket."""

    type: str                     # pty | file | unix
    path: str | None = None       # file and unix only
    console: bool = True          # a <console> alias of it was given (libvirt writes one)


@dataclass(frozen=True)
class Vsock:
    cid: int | None = None        # with auto: the one picked at start (live XML only)
    auto: bool = False            # <cid auto='yes'/>: each start picks one

    @property
    def fixed(self) -> int | None:
        return None if self.auto else self.cid


@dataclass(frozen=True)
class DomainDef:
    name: str
    uuid: str
    memory: int                   # bytes of guest RAM (<memory>)
    current_memory: int           # bytes after the balloon (<currentMemory>)
    vcpus: int
    kernel: str
    initrd: str | None = None
    cmdline: str | None = None
    machine: str | None = None    # os/type@machine: kept for round trips; kvmkit has one machine
    acpi: bool = True
    apic: bool = True
    pae: bool = True
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    disks: tuple[Disk, ...] = ()
    interfaces: tuple[Interface, ...] = ()
    serial: CharDev | None = None
    rng: bool = False
    balloon: bool = False
    balloon_autodeflate: bool = False
    vsock: Vsock | None = None
    title: str | None = None
    description: str | None = None
    metadata: str | None = None   # the <metadata> element as text, kept verbatim
    tuning: DomainTuning = field(default_factory=DomainTuning)   # cputune, memtune, memoryBacking

    def replace(self, **changes) -> "DomainDef":
        return dataclasses.replace(self, **changes)

    @property
    def writable_disks(self) -> tuple[Disk, ...]:
        return tuple(d for d in self.disks if d.writable)

    @property
    def macs(self) -> tuple[str, ...]:
        return tuple(i.mac for i in self.interfaces)


def new_uuid() -> str:
    return str(_uuid.uuid4())


def new_mac(taken: set[str] = frozenset()) -> str:  # type: ignore[assignment]
    """A random MAC under libvirt's prefix, not one of ``taken``."""
    rng = random.SystemRandom()
    while True:
        mac = MAC_PREFIX + "".join(f":{rng.randrange(256):02x}" for _ in range(3))
        if mac not in taken:
            return mac
