"""A paused VM's complete state, written to a directory and read back.

A snapshot directory holds two files:

``vmstate``
    one JSON header line (magic, format version, SHA-256 and length of the
    body), then the body: JSON with the machine's configuration, every
    vCPU (registers, special registers, XSAVE, XCRs, MSRs incl. TSC and
    kvmclock, LAPIC, events, debug registers, MP state, CPUID), the
    in-kernel irqchip and PIT, the KVM clock, every device and the
    host-compat state.  JSON so that a person can read it and a version
    bump can migrate it; the checksum so a torn or edited file is refused
    rather than restored into a guest that then corrupts its disks.
``memory``
    guest RAM, region after region at page-aligned offsets, sparse: pages
    that are all zero are holes.  A restore maps it ``MAP_PRIVATE``, so it
    reads nothing up front and the snapshot stays reusable (every restore
    is a copy-on-write clone).

Why a directory of plain files rather than QEMU's stream: the memory file
can be mapped, which is what makes a restore take milliseconds.
"""

from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmkit.errors import ConfigError
from kvmkit.kvm import structs as S

if TYPE_CHECKING:
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine

MAGIC = "kvmkit-vmstate"
STATE_VERSION = 1
STATE_FILE = "vmstate"
MEMORY_FILE = "memory"
PAGE = 4096
CHUNK = 1 << 16                      # zero detection granularity when writing RAM
EVENTS_VALID_NMI_PENDING, EVENTS_VALID_SIPI_VECTOR = 0x1, 0x2
MSR_IA32_TSC_DEADLINE = 0x6E0        # KVM_SET_LAPIC clears it: written after the LAPIC


class SnapshotError(ConfigError):
    """A snapshot directory that cannot be read, or does not fit this kvmkit."""


def _hex(obj: ctypes.Structure) -> str:
    return bytes(obj).hex()


def _unhex(typ, text: str):
    return typ.from_buffer_copy(bytes.fromhex(text))


# ---------------------------------------------------------------- capture
def _read_msrs(vcpu, indices: list[int]) -> dict[int, int]:
    """Every MSR in ``indices`` KVM will read (KVM_GET_MSRS stops at the
    first it refuses: skip that one and go on)."""
    out: dict[int, int] = {}
    rest = list(indices)
    while rest:
        got = vcpu.get_msrs(rest)
        out.update(got)
        rest = rest[len(got) + 1:]
    return out


def _write_msrs(vcpu, values: dict[int, int]) -> list[int]:
    """Set what KVM accepts; returns the refused indices."""
    refused = []
    items = list(values.items())
    while items:
        n = vcpu.set_msrs(dict(items))
        if n < len(items):
            refused.append(items[n][0])
        items = items[n + 1:]
    return refused


def capture_vcpu(vcpu, msr_indices: list[int]) -> dict[str, Any]:
    return {
        "regs": _hex(vcpu.get_regs()), "sregs": _hex(vcpu.get_sregs()),
        "xsave": _hex(vcpu.get_xsave()), "xcrs": _hex(vcpu.get_xcrs()),
        "lapic": _hex(vcpu.get_lapic()), "events": _hex(vcpu.get_vcpu_events()),
        "debugregs": _hex(vcpu.get_debugregs()), "mp_state": vcpu.get_mp_state(),
        "msrs": {f"{k:#x}": v for k, v in _read_msrs(vcpu, msr_indices).items()},
        "cpuid": [_hex(e) for e in vcpu.get_cpuid2()],
    }


def apply_vcpu(vcpu, s: dict[str, Any]) -> list[int]:
    """Load one vCPU's record, in the order KVM needs (QEMU's): CPUID first,
    then segment and control registers before the MSRs that depend on them,
    the LAPIC after its base, the TSC deadline after the LAPIC, events last.  Returns refused MSRs."""
    vcpu.set_cpuid2([_unhex(S.kvm_cpuid_entry2, e) for e in s["cpuid"]])
    vcpu.set_sregs(_unhex(S.kvm_sregs, s["sregs"]))
    vcpu.set_regs(_unhex(S.kvm_regs, s["regs"]))
    vcpu.set_xsave(_unhex(S.kvm_xsave, s["xsave"]))
    vcpu.set_xcrs(_unhex(S.kvm_xcrs, s["xcrs"]))
    msrs = {int(k, 16): v for k, v in s["msrs"].items()}
    deadline = msrs.pop(MSR_IA32_TSC_DEADLINE, None)
    refused = _write_msrs(vcpu, msrs)
    vcpu.set_mp_state(s["mp_state"])
    vcpu.set_lapic(_unhex(S.kvm_lapic_state, s["lapic"]))
    if deadline is not None:
        refused += _write_msrs(vcpu, {MSR_IA32_TSC_DEADLINE: deadline})
    events = _unhex(S.kvm_vcpu_events, s["events"])
    events.flags |= EVENTS_VALID_NMI_PENDING | EVENTS_VALID_SIPI_VECTOR
    vcpu.set_vcpu_events(events)
    vcpu.set_debugregs(_unhex(S.kvm_debugregs, s["debugregs"]))
    return refused


def config_record(config: "VmConfig") -> dict[str, Any]:
    """What a restore needs to rebuild the same machine (the serial
    console and start-paused are the restoring side's choice)."""
    virtio = None
    if config.virtio is not None:
        virtio = dataclasses.asdict(config.virtio)
        for n in virtio["nets"]:
            n["fd"] = None          # a descriptor handed over means nothing later: the tap's name does
    return {"kernel": str(config.kernel), "initrd": str(config.initrd) if config.initrd else None,
            "cmdline": config.cmdline, "memory": config.memory, "cpus": config.cpus,
            "name": config.name, "uuid": config.uuid, "debug_ports": config.debug_ports,
            "reboot_action": config.reboot_action, "acpi": config.acpi, "virtio": virtio}


def config_from_record(rec: dict[str, Any], compat: str, **overrides: Any) -> "VmConfig":
    from kvmkit.devices.virtio import config as vc
    from kvmkit.vmm.config import VmConfig
    virtio = None
    if rec.get("virtio") is not None:
        v = rec["virtio"]
        virtio = vc.VirtioSpecs(
            transport=v["transport"], disks=tuple(vc.DiskSpec(**d) for d in v["disks"]),
            nets=tuple(vc.NetSpec(**n) for n in v["nets"]),
            console=vc.ConsoleSpec(**v["console"]) if v["console"] is not None else None,
            rng=v["rng"], balloon=vc.BalloonSpec(**v["balloon"]) if v["balloon"] is not None else None,
            vsock=vc.VsockSpec(**v["vsock"]) if v["vsock"] is not None else None)
    virtio = overrides.pop("virtio", virtio)
    fields = dict(kernel=Path(rec["kernel"]), initrd=Path(rec["initrd"]) if rec["initrd"] else None,
                  cmdline=rec["cmdline"], memory=rec["memory"], cpus=rec["cpus"], name=rec["name"],
                  uuid=rec["uuid"], debug_ports=rec["debug_ports"], reboot_action=rec["reboot_action"],
                  acpi=rec["acpi"], virtio=virtio, host_compat=compat)
    fields.update(overrides)
    return VmConfig(**fields)


def capture(machine: "Machine") -> dict[str, Any]:
    """The body of a state file for a machine whose vCPUs are all parked."""
    vm = machine.vm
    msr_indices = sorted(machine._msr_index)
    return {
        "config": config_record(machine.config),
        "host-compat": "on" if machine.compat.enabled else "off",
        "memory-regions": [{"gpa": r.guest_phys_addr, "size": r.size} for r in machine.memory.regions],
        # The clock as the guest last saw it: a paused VM's clock stopped
        # at the pause (resume would set it back there too).
        "vm": {"clock": machine._paused_clock if machine._paused_clock is not None else vm.get_clock().clock,
               "irqchips": [_hex(vm.get_irqchip(i)) for i in range(3)],
               "pit": _hex(vm.get_pit2())},
        "vcpus": [capture_vcpu(v, msr_indices) for v in machine.vcpus],
        "devices": machine._device_states(),
        "pci-host": machine._pci_host_state(),
        "virtio": [{"name": d.name, "kind": d.kind, "state": d.save_state()} for d in machine.virtio_devices],
        "compat-state": machine._compat_state(),
        "saved-at": time.time(),
    }


# ---------------------------------------------------------------- files
def _layout(regions: list[dict[str, int]]) -> list[tuple[int, int, int]]:
    """(gpa, size, file offset) per region: page-aligned, back to back."""
    out, off = [], 0
    for r in regions:
        out.append((r["gpa"], r["size"], off))
        off += (r["size"] + PAGE - 1) & ~(PAGE - 1)
    return out


def write_memory(machine: "Machine", path: Path) -> int:
    """Write guest RAM sparsely; returns the bytes of data written."""
    zero = bytes(CHUNK)
    written = 0
    regions = machine.memory.regions
    spans = _layout([{"gpa": r.guest_phys_addr, "size": r.size} for r in regions])
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for r, (_, size, base) in zip(regions, spans):
            view = memoryview(r.mapping)
            for off in range(0, size, CHUNK):
                chunk = view[off:off + CHUNK]
                if chunk != zero[:len(chunk)]:
                    os.pwrite(fd, chunk, base + off)
                    written += len(chunk)
            view.release()
        os.ftruncate(fd, spans[-1][2] + spans[-1][1] if spans else 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


def _encode_bytes(obj: Any) -> Any:
    """Device records may hold raw bytes (FIFOs, NVRAM): JSON as ``{"$bytes": hex}``."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return {"$bytes": bytes(obj).hex()}
    raise TypeError(f"cannot save {type(obj).__name__} in a state file")


def _decode_bytes(obj: dict[str, Any]) -> Any:
    if len(obj) == 1 and "$bytes" in obj:
        return bytes.fromhex(obj["$bytes"])
    return obj


def write_state(body: dict[str, Any], path: Path) -> None:
    data = json.dumps(body, separators=(",", ":"), sort_keys=True, default=_encode_bytes).encode()
    header = json.dumps({"magic": MAGIC, "version": STATE_VERSION, "length": len(data),
                         "sha256": hashlib.sha256(data).hexdigest()}).encode()
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header + b"\n" + data)
        f.flush()
        os.fsync(f.fileno())
    tmp.rename(path)


@dataclass(frozen=True)
class SnapshotInfo:
    """What :func:`save` did, for the CLI and QMP reply."""

    path: str
    memory_bytes: int          # guest RAM size
    written_bytes: int         # non-zero RAM written
    seconds: float


def save(machine: "Machine", directory: str | os.PathLike) -> SnapshotInfo:
    """Write ``machine`` (already paused) into ``directory`` (created; an
    existing snapshot there is replaced only once the new one is complete)."""
    t0 = time.monotonic()
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    body = capture(machine)
    mem_tmp = d / (MEMORY_FILE + ".tmp")
    written = write_memory(machine, mem_tmp)
    # Memory first, state last: a directory whose vmstate is readable has
    # the memory that goes with it (the state file names its size).
    body["memory-file-size"] = mem_tmp.stat().st_size
    old_state = d / STATE_FILE
    if old_state.exists():
        old_state.unlink()
    mem_tmp.rename(d / MEMORY_FILE)
    write_state(body, d / STATE_FILE)
    _fsync_dir(d)
    return SnapshotInfo(str(d), machine.memory.total_size, written, time.monotonic() - t0)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Snapshot:
    """A snapshot directory, verified: the body and where its memory is."""

    path: Path
    body: dict[str, Any]
    base: "Snapshot | None" = None          # a diff snapshot's base (kvmkit.vmm.snapshot_diff)

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "Snapshot":
        d = Path(directory)
        state = d / STATE_FILE
        if not d.is_dir():
            raise SnapshotError(f"snapshot {d}: no such directory")
        try:
            raw = state.read_bytes()
        except FileNotFoundError:
            raise SnapshotError(f"snapshot {d}: no {STATE_FILE} file (not a snapshot, or an unfinished one)") \
                from None
        except OSError as e:
            raise SnapshotError(f"snapshot {state}: {e.strerror}") from None
        head, _, data = raw.partition(b"\n")
        try:
            header = json.loads(head)
        except ValueError:
            raise SnapshotError(f"snapshot {state}: not a kvmkit state file") from None
        if not isinstance(header, dict) or header.get("magic") != MAGIC:
            raise SnapshotError(f"snapshot {state}: not a kvmkit state file")
        if header.get("version") != STATE_VERSION:
            raise SnapshotError(f"snapshot {state}: state version {header.get('version')}, "
                                f"this kvmkit reads version {STATE_VERSION}")
        if header.get("length") != len(data) or hashlib.sha256(data).hexdigest() != header.get("sha256"):
            raise SnapshotError(f"snapshot {state}: checksum mismatch (the file is damaged)")
        body = json.loads(data, object_hook=_decode_bytes)
        mem = d / MEMORY_FILE
        if not mem.exists() or mem.stat().st_size != body["memory-file-size"]:
            raise SnapshotError(f"snapshot {d}: memory file missing or of the wrong size")
        from kvmkit.vmm.snapshot_diff import open_base
        return cls(d, body, open_base(d, body))

    @property
    def memory_path(self) -> Path:
        return self.path / MEMORY_FILE

    def memory_layout(self) -> list[tuple[int, int, int]]:
        return _layout(self.body["memory-regions"])

    def map_memory(self, shared: bool = False):
        """Guest RAM for a restore: the memory file mapped copy-on-write (or
        shared); a diff maps its base's and reads its own pages over it."""
        from kvmkit.memory.guest_memory import GuestMemory
        if self.base is None:
            return GuestMemory.from_file(str(self.memory_path), self.memory_layout(), shared=shared)
        if shared:
            raise SnapshotError(f"snapshot {self.path} is a diff: shared=on needs a full snapshot "
                                "(kvmkit snapshot merge folds it onto its base)")
        from kvmkit.vmm.snapshot_diff import overlay
        root = self.base
        while root.base is not None:
            root = root.base
        memory = GuestMemory.from_file(str(root.memory_path), root.memory_layout())
        overlay(self, memory)
        return memory

    def config(self, **overrides: Any) -> "VmConfig":
        return config_from_record(self.body["config"], self.body["host-compat"], **overrides)
