"""Instant clones: one snapshot restored many times at once, each restore an
independent VM.

Guest RAM is already copy-on-write per restore (``MAP_PRIVATE`` of the
snapshot's memory file).  What a clone must not share is everything the
snapshot names on the host:

- **disks**: each writable disk gets a qcow2 linked clone, an overlay
  backed by the snapshot's image, in the clone's directory.  The base is
  only read, so any number of clones run at once; it must not change
  after the snapshot (the clone's page cache and the disk would disagree),
  and a restore refuses a base whose size or modification time moved since
  the snapshot recorded them.  Read-only disks are shared as they are.
- **NICs**: a new tap (named by the kernel, ``kvmtapN``) and a new random
  locally administered MAC.  The device's config space shows the new MAC at
  once and the guest gets a config-change interrupt, but Linux's
  virtio-net reads the MAC only when it probes the device: the guest's
  interface keeps the old address (its frames carry it) until it is
  re-probed or told (``ip link set eth0 address $(cat ...)``).  Give clones
  on one bridge their own MAC from inside the guest.
- **vsock**: a new guest CID and a host socket in the clone's directory.
  The restore resets the vsock transport, and Linux re-reads the CID on
  that event: guest programs see the new CID.
- **consoles**: a virtio console's output file moves into the clone's
  directory; the serial console is the restoring side's choice anyway.

What a clone got is written to ``clone.json`` in its directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import uuid as _uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kvmkit.errors import ConfigError

if TYPE_CHECKING:
    from kvmkit.vmm.machine import Machine
    from kvmkit.vmm.snapshot import Snapshot

CLONE_RECORD = "clone.json"
CID_RANGE = (1 << 16, (1 << 32) - 2)    # random CIDs stay clear of small hand-picked ones


def identity(machine: "Machine") -> dict[str, Any]:
    """What a snapshot records so that a clone can tell its base disks
    unchanged and a plain restore keeps the guest's MACs: per disk its path,
    size and mtime; per NIC its tap and MAC."""
    from kvmkit.devices.virtio.net import format_mac
    disks = []
    specs = machine.config.virtio.disks if machine.config.virtio is not None else ()
    for d in specs:
        try:
            st = os.stat(d.path)
            disks.append({"path": str(Path(d.path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        except OSError:
            disks.append({"path": d.path, "size": None, "mtime_ns": None})
    nets = [{"tap": d.tap.name, "mac": format_mac(d.mac)} for d in machine.virtio_devices if d.kind == "virtio-net"]
    return {"disks": disks, "nets": nets}


def same_macs(snap: "Snapshot") -> Any:
    """The snapshot's devices with each NIC's MAC pinned to the one the
    guest saw (a tap kvmkit named gets a new name on restore, and the
    default MAC derives from the name): a plain restore keeps its MACs."""
    from kvmkit.devices.virtio import config as vc
    base = snap.config().virtio
    nets = (snap.body.get("identity") or {}).get("nets")
    if base is None or not nets or len(nets) != len(base.nets):
        return base
    return dataclasses.replace(base, nets=tuple(vc.NetSpec(n.tap, n.mac or rec["mac"])
                                                for n, rec in zip(base.nets, nets)))


@dataclass(frozen=True)
class ClonePlan:
    """The devices one clone gets, and where its files live."""

    directory: Path
    virtio: Any                     # VirtioSpecs for the clone
    record: dict[str, Any]          # what goes to clone.json


def random_mac() -> str:
    """A locally administered unicast MAC in QEMU's 52:54:00 range."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


def random_cid() -> int:
    return CID_RANGE[0] + secrets.randbelow(CID_RANGE[1] - CID_RANGE[0])


def default_directory(snapshot_dir: Path) -> Path:
    return snapshot_dir / "clones" / f"clone-{_uuid.uuid4().hex[:8]}"


def _check_base_unchanged(path: str, recorded: dict[str, Any] | None) -> None:
    if recorded is None or recorded.get("mtime_ns") is None:
        return
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ConfigError(f"clone: the snapshot's disk {path}: {exc.strerror}") from None
    if (st.st_size, st.st_mtime_ns) != (recorded["size"], recorded["mtime_ns"]):
        raise ConfigError(f"clone: the snapshot's disk {path} changed after the snapshot was taken "
                          "(did its VM keep running?); clones of it would see a disk that does not "
                          "match their memory")


def plan(snap: "Snapshot", directory: str | os.PathLike | None = None) -> ClonePlan:
    """Decide (without touching anything) what a clone of ``snap`` gets."""
    from kvmkit.devices.virtio import config as vc
    d = Path(directory) if directory is not None else default_directory(snap.path)
    if d.exists() and (not d.is_dir() or any(d.iterdir())):
        raise ConfigError(f"clone directory {d} exists and is not empty")
    base = snap.config().virtio
    ident = snap.body.get("identity") or {}
    rec: dict[str, Any] = {"snapshot": str(snap.path.resolve()), "disks": [], "nets": [], "vsock": None}
    if base is None:
        return ClonePlan(d, None, rec)
    disks = []
    for i, spec in enumerate(base.disks):
        if spec.readonly:
            disks.append(spec)
            rec["disks"].append({"base": spec.path, "overlay": None})
            continue
        recorded = ident.get("disks", [])
        _check_base_unchanged(spec.path, recorded[i] if i < len(recorded) else None)
        overlay = d / f"disk{i}.qcow2"
        disks.append(dataclasses.replace(spec, path=str(overlay), format="qcow2"))
        rec["disks"].append({"base": str(Path(spec.path).resolve()), "overlay": str(overlay)})
    nets = []
    for spec in base.nets:
        n = vc.NetSpec(tap=None, mac=random_mac())
        nets.append(n)
        rec["nets"].append({"mac": n.mac})
    vsock = None
    if base.vsock is not None:
        vsock = vc.VsockSpec(random_cid(), str(d / "vsock.sock"))
        if len(vsock.uds.encode()) > 100:
            raise ConfigError(f"clone directory {d}: the vsock socket path would be over 100 bytes; "
                              "give a shorter clone directory")
        rec["vsock"] = {"cid": vsock.cid, "uds": vsock.uds}
    console = base.console
    if console is not None and console.out:
        console = vc.ConsoleSpec(str(d / "console.out"))
    specs = dataclasses.replace(base, disks=tuple(disks), nets=tuple(nets), vsock=vsock, console=console)
    return ClonePlan(d, specs, rec)


def create_files(p: ClonePlan) -> None:
    """Make the clone's directory and its disk overlays (undone on failure)."""
    from kvmkit.block.create import create_image
    from kvmkit.block.image import probe_format
    made_dir = not p.directory.exists()
    p.directory.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    try:
        for disk in p.record["disks"]:
            if disk["overlay"] is None:
                continue
            create_image(disk["overlay"], "qcow2", None, backing=disk["base"],
                         backing_fmt=probe_format(disk["base"]))
            made.append(Path(disk["overlay"]))
    except BaseException:
        for f in made:
            f.unlink(missing_ok=True)
        if made_dir:
            p.directory.rmdir()
        raise


def restore(directory: str | os.PathLike, clone_dir: str | os.PathLike | None = None,
            **overrides: Any) -> "Machine":
    """A new, independent machine from the snapshot in ``directory`` (not
    started).  ``clone_dir`` holds the clone's overlays and sockets (default:
    a new ``DIR/clones/clone-XXXXXXXX``)."""
    from kvmkit.vmm import hostcompat
    from kvmkit.vmm.machine import Machine
    from kvmkit.vmm.snapshot import Snapshot
    if overrides.pop("shared_memory", False):
        raise ConfigError("a clone cannot write the snapshot's memory back (shared=on): clones share it")
    if "virtio" in overrides:
        raise ConfigError("a clone takes its devices from the snapshot")
    snap = Snapshot.open(directory)
    p = plan(snap, clone_dir)
    create_files(p)
    try:
        config = snap.config(virtio=p.virtio, uuid=str(_uuid.uuid4()), **overrides)
        m = Machine(config, compat=hostcompat.resolve(config.host_compat), restore=snap)
    except BaseException:
        for disk in p.record["disks"]:
            if disk["overlay"]:
                Path(disk["overlay"]).unlink(missing_ok=True)
        raise
    for dev in m.virtio_devices:
        if dev.kind == "virtio-net":
            dev.config_changed()        # the new MAC: a config interrupt for drivers that re-read it
    from kvmkit.vmm.snapshot import tap_names
    p.record["taps"] = tap_names(m)
    p.record["uuid"] = config.uuid
    (p.directory / CLONE_RECORD).write_text(json.dumps(p.record, indent=2) + "\n")
    m.clone_directory = p.directory
    return m
