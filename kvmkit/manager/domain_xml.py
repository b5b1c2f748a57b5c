""":class:`DomainDef` → libvirt domain XML, the way ``virsh dumpxml`` lays it
out (memory in KiB, both <serial> and its <console> alias, libvirt's default
elements spelled out), so that libvirt's own schema accepts it."""

from __future__ import annotations

from kvmkit.manager import tuning
from kvmkit.manager.domain import CharDev, Disk, DomainDef, Interface
from kvmkit.manager.xmltree import Node, element, parse, serialise


def domain_xml(d: DomainDef, *, domain_id: int | None = None, vsock_cid: int | None = None,
               taps: tuple[str | None, ...] = ()) -> str:
    """The document; ``domain_id``/``vsock_cid``/``taps`` are the live values of a running domain."""
    kib = lambda n: str(n // 1024)  # noqa: E731
    children = [
        element("name", d.name), element("uuid", d.uuid),
        element("title", d.title) if d.title else None,
        element("description", d.description) if d.description else None,
        parse(d.metadata) if d.metadata else None,
        element("memory", kib(d.memory), unit="KiB"),
        element("currentMemory", kib(d.current_memory), unit="KiB"),
        tuning.memtune_xml(d.tuning), tuning.memory_backing_xml(d.tuning),
        element("vcpu", str(d.vcpus), placement="static", cpuset=d.tuning.cpuset),
        tuning.cputune_xml(d.tuning),
        element("os", children=[
            element("type", "hvm", arch="x86_64", machine=d.machine),
            element("kernel", d.kernel),
            element("initrd", d.initrd) if d.initrd else None,
            element("cmdline", d.cmdline) if d.cmdline is not None else None]),
        element("features", children=[element(f) for f in ("acpi", "apic", "pae") if getattr(d, f)])
        if (d.acpi or d.apic or d.pae) else None,
        element("clock", offset="utc"),
        element("on_poweroff", d.on_poweroff), element("on_reboot", d.on_reboot),
        element("on_crash", d.on_crash),
        element("devices", children=[
            *(_disk(x) for x in d.disks),
            *(_interface(x, taps[i] if i < len(taps) else None) for i, x in enumerate(d.interfaces)),
            *_serial(d.serial),
            element("rng", model="virtio", children=[element("backend", "/dev/urandom", model="random")])
            if d.rng else None,
            element("memballoon", model="virtio", autodeflate="on" if d.balloon_autodeflate else None)
            if d.balloon else element("memballoon", model="none"),
            _vsock(d, vsock_cid)]),
    ]
    return serialise(element("domain", children=children, type="kvm",
                             id=str(domain_id) if domain_id is not None else None))


def _disk(x: Disk) -> Node:
    return element("disk", type="file", device="disk", children=[
        element("driver", name="qemu", type=x.format, cache=x.cache, error_policy=x.error_policy,
                rerror_policy=x.rerror_policy, discard=x.discard),
        element("source", file=x.source),
        element("target", dev=x.target, bus="virtio"),
        element("readonly") if x.readonly else None,
        element("serial", x.serial) if x.serial else None])


def _interface(x: Interface, live_tap: str | None) -> Node:
    src = {"bridge": {"bridge": x.source}, "network": {"network": x.source}}.get(x.type)
    tap = x.target or live_tap
    return element("interface", type=x.type, children=[
        element("mac", address=x.mac),
        element("source", **src) if src else None,
        element("target", dev=tap) if tap else None,
        element("model", type="virtio")])


def _serial(c: CharDev | None) -> list[Node]:
    if c is None:
        return []
    source = element("source", mode="bind" if c.type == "unix" else None, path=c.path) if c.path else None
    serial = element("serial", type=c.type, children=[
        source, element("target", type="isa-serial", port="0", children=[element("model", name="isa-serial")])])
    if not c.console:
        return [serial]
    console = element("console", type=c.type, children=[
        element("source", mode="bind" if c.type == "unix" else None, path=c.path) if c.path else None,
        element("target", type="serial", port="0")])
    return [serial, console]


def _vsock(d: DomainDef, live_cid: int | None) -> Node | None:
    if d.vsock is None:
        return None
    cid = live_cid if live_cid is not None else d.vsock.cid
    cid_node = element("cid", auto="yes" if d.vsock.auto else "no", address=str(cid) if cid is not None else None)
    return element("vsock", model="virtio", children=[cid_node])
