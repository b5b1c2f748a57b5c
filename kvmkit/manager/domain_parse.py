"""libvirt domain XML → :class:`DomainDef`, reporting what kvmkit lacks.

Three kinds of trouble, three answers: a document that is not well-formed
XML (:class:`XmlError` with the line and column), a value that is wrong
(:class:`XmlError` naming the element and its line: a memory size that is
not a number, a relative path), and libvirt features kvmkit does not have
(:class:`Unsupported` listing every one of them by path).
"""

from __future__ import annotations

import os
import re
import uuid as _uuid

from kvmkit.manager.domain import (CACHE_MODES, ERROR_POLICIES, CharDev, Disk, DomainDef, Interface, Vsock,
                                   new_mac, new_uuid)
from kvmkit.manager.errors import Unsupported
from kvmkit.manager.reader import Reader
from kvmkit.manager.tuning import parse_tuning
from kvmkit.manager.units import scaled
from kvmkit.manager.xmltree import parse as parse_tree
from kvmkit.manager.xmltree import serialise

MIN_MEMORY = 32 << 20             # what kvmkit's VMM accepts (kvmkit.vmm.config.MIN_MEMORY)
_NAME_BAD = re.compile(r"[/\x00-\x1f\x7f]")
_TARGET = re.compile(r"^vd[a-z]{1,2}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
LIFECYCLE = {"on_poweroff": ("destroy",), "on_reboot": ("restart", "destroy"), "on_crash": ("destroy",)}


def parse_domain(text: str | bytes, source: str = "(domain_definition)") -> DomainDef:
    """Parse and validate a domain document (see the module docstring)."""
    root = parse_tree(text, source)
    if root.tag != "domain":
        raise Reader(root, "", [], source).error(f"the root element is <{root.tag}>, not <domain>")
    unsupported: list[str] = []
    r = Reader(root, "", unsupported, source)
    r.attr("type", ("kvm",))
    r.attr("id")                                   # live XML fed back: the id is runtime state
    name = _name(r)
    dom = DomainDef(
        name=name, uuid=_uuid_of(r), **_memory(r), vcpus=_vcpus(r), **_os(r), **_features(r),
        **_lifecycle(r), title=r.child_text("title"), description=r.child_text("description"),
        metadata=_metadata(r), **_devices(r))
    dom = dom.replace(tuning=parse_tuning(r, dom.vcpus))
    if dom.tuning.hard_limit is not None and dom.tuning.hard_limit < dom.memory:
        raise r.child("memtune").error(f"hard_limit {dom.tuning.hard_limit >> 10} KiB is below the domain's "
                                       f"memory ({dom.memory >> 10} KiB)")
    _clock(r)
    r.done()
    if unsupported:
        raise Unsupported(unsupported)
    return dom


def _name(r: Reader) -> str:
    name = r.child_text("name")
    if not name:
        raise r.error("a <name> is required")
    if _NAME_BAD.search(name) or name in (".", "..") or len(name) > 200:
        raise r.error(f"name {name!r} may not contain '/' or control characters")
    return name


def _uuid_of(r: Reader) -> str:
    text = r.child_text("uuid")
    if text is None:
        return new_uuid()
    try:
        return str(_uuid.UUID(text))
    except ValueError:
        raise r.child("uuid").error(f"{text!r} is not a UUID") from None


def _size(r: Reader, tag: str) -> int | None:
    c = r.child(tag)
    if c is None:
        return None
    unit = c.attr("unit", default="KiB")
    c.done()
    value = scaled(c.text, unit)
    if value is None:
        raise c.error(f"{c.text!r} {unit} is not a size (a whole number; units b, KiB, MiB, GiB, KB, MB...)")
    return value


def _memory(r: Reader) -> dict:
    memory = _size(r, "memory")
    current = _size(r, "currentMemory")
    if memory is None:
        raise r.error("a <memory> size is required")
    if memory < MIN_MEMORY:
        raise r.child("memory").error(f"{memory >> 20} MiB is below kvmkit's minimum of {MIN_MEMORY >> 20} MiB")
    current = memory if current is None else current
    if current > memory:
        raise r.child("currentMemory").error("currentMemory is larger than memory")
    return {"memory": memory, "current_memory": current}


def _vcpus(r: Reader) -> int:
    c = r.child("vcpu")
    if c is None:
        return 1
    c.attr("placement", ("static",))
    c.attr("cpuset")                            # read with <cputune> (kvmkit.manager.tuning)
    c.done()
    if not c.text.isdigit() or not 1 <= int(c.text) <= 255:
        raise c.error(f"{c.text!r} is not a vCPU count (1-255)")
    return int(c.text)


def _path(r: Reader, what: str, value: str | None) -> str | None:
    if value is not None and not os.path.isabs(value):
        raise r.error(f"{what} {value!r} must be an absolute path")
    return value


def _os(r: Reader) -> dict:
    o = r.child("os")
    if o is None:
        raise r.error("an <os> element with a <kernel> is required")
    t = o.child("type")
    machine = None
    if t is not None:
        t.attr("arch", ("x86_64",))
        machine = t.attr("machine")
        t.done()
        if t.text != "hvm":
            o.report(f"os/type={t.text}")
    kernel = o.child_text("kernel")
    if not kernel:
        raise o.error("a <kernel> is required: kvmkit boots a kernel directly (it has no firmware "
                      "and cannot boot from a disk)")
    out = {"kernel": _path(o, "kernel", kernel), "initrd": _path(o, "initrd", o.child_text("initrd")),
           "cmdline": o.child_text("cmdline"), "machine": machine}
    o.done()
    return out


def _features(r: Reader) -> dict:
    f = r.child("features")
    if f is None:
        return {"acpi": False, "apic": False, "pae": False}
    out = {}
    for tag in ("acpi", "apic", "pae"):
        c = f.child(tag)
        out[tag] = c is not None
        if c is not None:
            c.done()
    f.done()
    return out


def _lifecycle(r: Reader) -> dict:
    out = {}
    for tag, allowed in LIFECYCLE.items():
        value = r.child_text(tag)
        if value is not None and value not in allowed:
            r.report(f"{tag}={value}")
            value = None
        out[tag] = value or allowed[0]
    return out


def _clock(r: Reader) -> None:
    c = r.child("clock")
    if c is not None:
        c.attr("offset", ("utc",))              # kvmkit's RTC keeps UTC
        c.done()


def _metadata(r: Reader) -> str | None:
    m = r.child("metadata")
    if m is None:
        return None
    return serialise(m.node).strip()            # kept verbatim, as libvirt keeps it


def _devices(r: Reader) -> dict:
    d = r.child("devices")
    if d is None:
        return {"balloon": True}            # as with an empty <devices/>
    disks = tuple(sorted(filter(None, (_disk(x) for x in d.children("disk"))),
                         key=lambda k: (len(k.target), k.target)))
    targets = [k.target for k in disks]
    dup = sorted({t for t in targets if targets.count(t) > 1})
    if dup:
        raise d.error(f"disk target {dup[0]} is used twice")
    nets = tuple(_interface(x) for x in d.children("interface"))
    out = {"disks": disks, "interfaces": nets, "serial": _serial(d)}
    rngs = d.children("rng")
    for x in rngs[1:]:
        x.report("devices/rng (a second one)")
    out["rng"] = bool(rngs) and _rng(rngs[0])
    out.update(_balloon(d))
    socks = d.children("vsock")
    out["vsock"] = _vsock(socks[0]) if socks else None
    for x in socks[1:]:
        x.report("devices/vsock (a second one)")
    d.done()
    return out


def _disk(x: Reader) -> Disk | None:
    """A virtio disk backed by a file; anything else (a cdrom, a SATA bus, a
    block device) is reported and the element skipped."""
    x.attr("type", ("file",))
    x.attr("device", ("disk",))
    if x.node.attrs.get("type", "file") != "file" or x.node.attrs.get("device", "disk") != "disk":
        return None                 # reported; its other contents would only add noise
    drv = x.child("driver")
    fmt, cache, discard, werror, rerror = "raw", None, None, None, None
    if drv is not None:
        drv.attr("name", ("qemu",))
        fmt = drv.attr("type", ("raw", "qcow2"), "raw")
        cache = drv.attr("cache", CACHE_MODES)
        cache = None if cache == "default" else cache
        discard = drv.attr("discard", ("unmap", "ignore"))
        werror = drv.attr("error_policy", ERROR_POLICIES)
        rerror = drv.attr("rerror_policy", ERROR_POLICIES[:3])
        drv.done()
    src = x.child("source")
    if src is None or not src.attr("file"):
        raise x.error("a <source file='...'/> is required")
    path = _path(src, "source file", src.attr("file"))
    src.done()
    tgt = x.child("target")
    if tgt is None or not tgt.attr("dev"):
        raise x.error("a <target dev='vdX'/> is required")
    dev = tgt.attr("dev")
    tgt.attr("bus", ("virtio",))
    tgt.done()
    if not _TARGET.match(dev):
        tgt.report(f"devices/disk/target@dev={dev} (kvmkit's disks are virtio: vda, vdb, ...)")
    ro = x.child("readonly")
    if ro is not None:
        ro.done()
    serial = x.child_text("serial")
    x.done()
    return Disk(path, dev, fmt, ro is not None, cache, discard, serial, werror, rerror)


def _interface(x: Reader) -> Interface:
    kind = x.attr("type", ("ethernet", "bridge", "network"), "ethernet")
    mac_r = x.child("mac")
    mac = None
    if mac_r is not None:
        mac = (mac_r.attr("address") or "").lower()
        mac_r.done()
        if not _MAC.match(mac) or int(mac[:2], 16) & 1:
            raise mac_r.error(f"{mac!r} is not a unicast MAC address")
    source = None
    src = x.child("source")
    if src is not None:
        source = src.attr({"bridge": "bridge", "network": "network"}.get(kind, "-"))
        src.done()
    if kind != "ethernet" and not source:
        raise x.error(f"an interface of type {kind} needs <source {kind}='...'/>")
    tgt = x.child("target")
    target = None
    if tgt is not None:
        target = tgt.attr("dev")
        tgt.done()
        if target and (len(target) > 15 or "/" in target):
            raise tgt.error(f"tap name {target!r} must be at most 15 characters without '/'")
    model = x.child("model")
    if model is not None:
        model.attr("type", ("virtio",))
        model.done()
    x.done()
    return Interface(kind, mac or new_mac(), source, target)


def _chardev(x: Reader, target_types: tuple[str, ...]) -> CharDev:
    kind = x.attr("type", ("pty", "file", "unix"), "pty")
    path = None
    src = x.child("source")
    if src is not None:
        src.attr("mode", ("bind",))
        path = _path(src, "source path", src.attr("path"))
        src.done()
    if kind in ("file", "unix") and not path:
        raise x.error(f"a {kind} serial port needs <source path='...'/>")
    tgt = x.child("target")
    if tgt is not None:
        tgt.attr("type", target_types)
        tgt.attr("port", ("0",))
        model = tgt.child("model")
        if model is not None:
            model.attr("name", ("isa-serial",))
            model.done()
        tgt.done()
    x.done()
    return CharDev(kind, path if kind != "pty" else None)


def _serial(d: Reader) -> CharDev | None:
    serials = d.children("serial")
    consoles = d.children("console")
    for x in serials[1:]:
        x.report("devices/serial (a second one: kvmkit has COM1 only)")
    for x in consoles[1:]:
        x.report("devices/console (a second one)")
    com1 = _chardev(serials[0], ("isa-serial",)) if serials else None
    if consoles:
        alias = _chardev(consoles[0], ("serial",))
        if com1 is None:
            return alias
        return CharDev(com1.type, com1.path, console=True)
    return None if com1 is None else CharDev(com1.type, com1.path, console=False)


def _rng(x: Reader) -> bool:
    x.attr("model", ("virtio",))
    b = x.child("backend")
    if b is not None:
        b.attr("model", ("random",))
        b.done()
        if b.text and b.text not in ("/dev/urandom", "/dev/random"):
            x.report(f"devices/rng/backend={b.text}")
    x.done()
    return True


def _balloon(d: Reader) -> dict:
    b = d.child("memballoon")
    if b is None:
        return {"balloon": True}            # libvirt adds a virtio balloon unless told model='none'
    model = b.attr("model", ("virtio", "none"), "none")
    autodeflate = b.attr("autodeflate", ("on", "off"), "off")
    b.done()
    return {"balloon": model == "virtio", "balloon_autodeflate": autodeflate == "on"}


def _vsock(x: Reader) -> Vsock:
    x.attr("model", ("virtio",))
    c = x.child("cid")
    if c is None:
        x.done()
        return Vsock(None, auto=True)
    auto = c.attr("auto", ("yes", "no"), "yes") == "yes"
    addr = c.attr("address")
    c.done()
    x.done()
    if addr is None and auto:
        return Vsock(None, auto=True)
    if addr is None or not addr.isdigit() or not 3 <= int(addr) < 0xFFFFFFFF:
        raise c.error(f"vsock cid {addr!r} must be a number from 3 to 4294967294")
    return Vsock(int(addr), auto)
