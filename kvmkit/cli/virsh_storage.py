"""virsh's storage commands: ``dir`` pools and the volumes in them."""

from __future__ import annotations

import argparse
from typing import Any

from kvmkit.cli.virsh import LookupFailed, command
from kvmkit.cli.virsh_output import fields, table
from kvmkit.manager.errors import NoPool, NoVolume, XmlError
from kvmkit.manager.units import human, scaled
from kvmkit.manager.xmltree import serialise


def _pool(host, name: str):
    try:
        return host.storage.pool(name)
    except NoPool:
        raise LookupFailed(f"failed to get pool '{name}'") from None


def _vol(host, a):
    if a.pool is not None:
        _pool(host, a.pool)
    try:
        return host.storage.volume(a.vol, a.pool)
    except NoVolume:
        raise LookupFailed(f"failed to get vol '{a.vol}'" + (", specifying --pool might help" if a.pool is None
                                                               else "")) from None


def _size(text: str, what: str = "capacity") -> int:
    value = scaled(text, "b")
    if value is None:
        raise XmlError(f"Scaled numeric value '{text}' for <{what}> option is malformed or out of range")
    return value


# --- pools ------------------------------------------------------------------------------------
def pool_define_as(host, a) -> str:
    host.storage.define_pool(a.name, a.type, a.target)
    return f"Pool {a.name} defined\n"


def _pool_action(method: str, message: str):
    def run(host, a) -> str:
        _pool(host, a.pool)
        getattr(host.storage, method)(a.pool)
        return f"Pool {a.pool} {message}\n"
    return run


def pool_list(host, a) -> str:
    pools = host.storage.pools()
    if not a.all:
        pools = [p for p in pools if p.active != a.inactive]
    return table(["Name", "State", "Autostart"], [[p.name, "active" if p.active else "inactive", "no"] for p in pools])


def pool_info(host, a) -> str:
    p = _pool(host, a.pool)
    pairs: list[tuple[str, Any]] = [("Name", p.name), ("UUID", p.uuid), ("State", "running" if p.active else "inactive"),
                                    ("Persistent", "yes"), ("Autostart", "no")]
    if p.active:
        cap, alloc, avail = p.space()
        pairs += [("Capacity", human(cap)), ("Allocation", human(alloc)), ("Available", human(avail))]
    return fields(pairs)


def pool_dumpxml(host, a) -> str:
    from kvmkit.manager.storage import pool_xml
    return pool_xml(_pool(host, a.pool))


# --- volumes --------------------------------------------------------------------------------
def vol_create_as(host, a) -> str:
    _pool(host, a.pool)
    host.storage.create_volume(a.pool, a.name, _size(a.capacity) if a.capacity else None, a.format,
                               a.backing_vol, a.backing_vol_format)
    return f"Vol {a.name} created\n"


def vol_list(host, a) -> str:
    _pool(host, a.pool)
    vols = host.storage.volumes(a.pool)
    if a.details:
        return table(["Name", "Path", "Type", "Capacity", "Allocation"],
                     [[v.name, str(v.path), "file", human(v.capacity), human(v.allocation)] for v in vols])
    return table(["Name", "Path"], [[v.name, str(v.path)] for v in vols])


def vol_info(host, a) -> str:
    v = _vol(host, a)
    return fields([("Name", v.name), ("Type", "file"), ("Capacity", human(v.capacity)),
                   ("Allocation", human(v.allocation))])


def vol_path(host, a) -> str:
    return f"{_vol(host, a).path}\n"


def vol_dumpxml(host, a) -> str:
    from kvmkit.manager.xmltree import element
    v = _vol(host, a)
    children = [element("name", v.name), element("key", str(v.path)),
                element("capacity", str(v.capacity), unit="bytes"),
                element("allocation", str(v.allocation), unit="bytes"),
                element("target", children=[element("path", str(v.path)), element("format", type=v.format)])]
    if v.backing:
        children.append(element("backingStore", children=[element("path", v.backing)]))
    return serialise(element("volume", type="file", children=children))


def vol_clone(host, a) -> str:
    v = _vol(host, a)
    host.storage.clone_volume(v, a.newname)
    return f"Vol {a.newname} cloned from {v.name}\n"


def vol_resize(host, a) -> str:
    v = _vol(host, a)
    size = _size(a.capacity)
    if a.delta:
        size = v.capacity - size if a.shrink else v.capacity + size
    host.storage.resize_volume(v, size, shrink=a.shrink)
    return f"Size of volume '{v.name}' successfully changed to {a.capacity}\n"


def vol_delete(host, a) -> str:
    v = _vol(host, a)
    host.storage.delete_volume(v)
    return f"Vol {v.name} deleted\n"


def vol_upload(host, a) -> str:
    host.storage.upload(_vol(host, a), a.file, a.offset, a.length)
    return ""


def vol_download(host, a) -> str:
    host.storage.download(_vol(host, a), a.file, a.offset, a.length)
    return ""


def _vol_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("vol", metavar="VOL", help="vol name, key or path")
    p.add_argument("--pool", help="pool name")
    return p


def register(sub: Any) -> None:
    p = command(sub, "pool-define-as", pool_define_as, "define a pool from a set of args",
                "Failed to define pool {name}")
    p.add_argument("name", metavar="NAME")
    p.add_argument("type", metavar="TYPE", help="type of the pool (dir)")
    p.add_argument("--target", required=True, help="target for underlying storage (a directory)")
    for name, method, message, verb in (("pool-build", "build_pool", "built", "build"),
                                        ("pool-start", "start_pool", "started", "start"),
                                        ("pool-destroy", "destroy_pool", "destroyed", "destroy"),
                                        ("pool-undefine", "undefine_pool", "has been undefined", "undefine")):
        command(sub, name, _pool_action(method, message), f"{verb} a pool",
                f"Failed to {verb} pool {{pool}}").add_argument("pool", metavar="POOL")
    p = command(sub, "pool-list", pool_list, "list pools")
    p.add_argument("--all", action="store_true")
    p.add_argument("--inactive", action="store_true")
    command(sub, "pool-info", pool_info, "storage pool information").add_argument("pool", metavar="POOL")
    command(sub, "pool-dumpxml", pool_dumpxml, "pool information in XML").add_argument("pool", metavar="POOL")
    p = command(sub, "vol-create-as", vol_create_as, "create a volume from a set of args",
                "Failed to create vol {name}")
    p.add_argument("pool", metavar="POOL")
    p.add_argument("name", metavar="NAME")
    p.add_argument("capacity", metavar="CAPACITY", nargs="?", help="size, as scaled integer (default bytes)")
    p.add_argument("--format", default="raw", choices=("raw", "qcow2"))
    p.add_argument("--backing-vol", metavar="VOL", help="the backing volume (name in POOL, or a path)")
    p.add_argument("--backing-vol-format", choices=("raw", "qcow2"))
    p.add_argument("--allocation", help="ignored: volumes are thin")
    p = command(sub, "vol-list", vol_list, "list vols")
    p.add_argument("pool", metavar="POOL")
    p.add_argument("--details", action="store_true")
    _vol_args(command(sub, "vol-info", vol_info, "storage vol information"))
    _vol_args(command(sub, "vol-path", vol_path, "returns the volume path for a given volume name or key"))
    _vol_args(command(sub, "vol-dumpxml", vol_dumpxml, "vol information in XML"))
    _vol_args(command(sub, "vol-clone", vol_clone, "clone a volume", "Failed to clone vol from {vol}")).add_argument(
        "newname", metavar="NEWNAME")
    p = _vol_args(command(sub, "vol-resize", vol_resize, "resize a vol", "Failed to change size of volume '{vol}'"))
    p.add_argument("capacity", metavar="CAPACITY")
    p.add_argument("--shrink", action="store_true")
    p.add_argument("--delta", action="store_true")
    _vol_args(command(sub, "vol-delete", vol_delete, "delete a vol", "Failed to delete vol {vol}"))
    for name, fn, verb in (("vol-upload", vol_upload, "upload file contents to a volume"),
                           ("vol-download", vol_download, "download volume contents to a file")):
        p = _vol_args(command(sub, name, fn, verb, f"cannot {name[4:]} {{vol}}"))
        p.add_argument("file", metavar="FILE")
        p.add_argument("--offset", type=int, default=0)
        p.add_argument("--length", type=int, default=None)
