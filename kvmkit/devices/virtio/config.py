"""The virtio command-line options as frozen, validated specs.

``--disk path=IMG[,format=raw|qcow2][,readonly=on][,cache=MODE][,discard=unmap|ignore][,serial=S]
[,werror=enospc|stop|report|ignore][,rerror=report|stop|ignore]``
(MODE: writeback, none, writethrough, directsync, unsafe; see :mod:`kvmkit.block.cachemode`;
werror/rerror as QEMU's: what a failed guest write/read does, default enospc/report)
``--net [tap=NAME][,mac=52:54:00:12:34:56][,bridge=BR][,fd=N]``   (no tap → kvmkit creates one; bridge: join BR; fd: an open tap)
``--console virtio[,out=FILE]``   ``--rng``   ``--balloon[,deflate-on-oom=on|off]``
``--vsock cid=N,uds=PATH``   ``--virtio-transport pci|mmio``

Parsing only checks syntax and values; opening images and taps happens at
attach time, where the error can name the file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kvmkit.block.cachemode import MODES
from kvmkit.errors import ConfigError

_BOOL = {"on": True, "yes": True, "true": True, "1": True,
         "off": False, "no": False, "false": False, "0": False}
_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
WERROR = ("enospc", "stop", "report", "ignore")       # QEMU's BlockdevOnError for writes
RERROR = ("report", "stop", "ignore")


@dataclass(frozen=True)
class DiskSpec:
    path: str
    format: str | None = None          # None: probe
    readonly: bool = False
    cache: str = "writeback"           # a QEMU cache mode: kvmkit.block.cachemode.MODES
    discard: bool = False              # discard=unmap: guest discards punch holes
    serial: str | None = None
    werror: str = "enospc"             # QEMU's: stop the VM on ENOSPC, report other write errors
    rerror: str = "report"


@dataclass(frozen=True)
class NetSpec:
    tap: str | None = None             # None: create a new tap (kvmtapN)
    mac: str | None = None             # None: derived from the tap name
    bridge: str | None = None          # a host bridge the tap joins (and is brought up on)
    fd: int | None = None              # an open tap handed over (by a jail's supervisor); tap is ignored


@dataclass(frozen=True)
class ConsoleSpec:
    out: str | None = None             # None: the VMM's stdout


@dataclass(frozen=True)
class BalloonSpec:
    deflate_on_oom: bool = True


@dataclass(frozen=True)
class VsockSpec:
    cid: int
    uds: str


@dataclass(frozen=True)
class VirtioSpecs:
    transport: str = "pci"
    disks: tuple[DiskSpec, ...] = ()
    nets: tuple[NetSpec, ...] = ()
    console: ConsoleSpec | None = None
    rng: bool = False
    balloon: BalloonSpec | None = None
    vsock: VsockSpec | None = None

    def __post_init__(self) -> None:
        parse_transport(self.transport)

    @property
    def empty(self) -> bool:
        return not (self.disks or self.nets or self.console or self.rng or self.balloon or self.vsock)


def _options(option: str, text: str, allowed: set[str], bare: str | None = None) -> dict[str, str]:
    """``k=v,k=v`` → dict; a first item without ``=`` is ``bare``'s value."""
    out: dict[str, str] = {}
    for i, item in enumerate(p for p in text.split(",") if p != ""):
        key, eq, value = item.partition("=")
        if not eq:
            if i == 0 and bare is not None:
                key, value = bare, item
            else:
                raise ConfigError(f"{option}: {item!r} is not key=value")
        key = key.strip()
        if key not in allowed:
            raise ConfigError(f"{option}: unknown key {key!r} (known: {', '.join(sorted(allowed))})")
        if key in out:
            raise ConfigError(f"{option}: {key!r} given twice")
        out[key] = value.strip()
    return out


def _bool(option: str, key: str, value: str) -> bool:
    try:
        return _BOOL[value.lower()]
    except KeyError:
        raise ConfigError(f"{option}: {key}={value!r} must be on or off") from None


def parse_disk(text: str) -> DiskSpec:
    o = _options("--disk", text, {"path", "format", "readonly", "cache", "discard", "serial", "werror", "rerror"},
                 bare="path")
    if not o.get("path"):
        raise ConfigError("--disk: path=IMG is required")
    fmt = o.get("format")
    if fmt is not None and fmt not in ("raw", "qcow2"):
        raise ConfigError(f"--disk: format={fmt!r} must be raw or qcow2")
    cache = o.get("cache", "writeback")
    if cache not in MODES:
        raise ConfigError(f"--disk: cache={cache!r} must be one of {', '.join(MODES)}")
    discard = o.get("discard", "ignore")
    if discard not in ("unmap", "ignore", "on", "off"):
        raise ConfigError(f"--disk: discard={discard!r} must be unmap or ignore")
    serial = o.get("serial")
    if serial is not None and (len(serial) > 20 or not serial.isprintable()):
        raise ConfigError(f"--disk: serial={serial!r} must be at most 20 printable characters")
    readonly = _bool("--disk", "readonly", o["readonly"]) if "readonly" in o else False
    werror, rerror = o.get("werror", "enospc"), o.get("rerror", "report")
    if werror not in WERROR:
        raise ConfigError(f"--disk: werror={werror!r} must be one of {', '.join(WERROR)}")
    if rerror not in RERROR:
        raise ConfigError(f"--disk: rerror={rerror!r} must be one of {', '.join(RERROR)}")
    return DiskSpec(o["path"], fmt, readonly, cache, discard in ("unmap", "on"), serial, werror, rerror)


def parse_net(text: str) -> NetSpec:
    o = _options("--net", text, {"tap", "mac", "bridge", "fd"}, bare="tap")
    tap = o.get("tap") or None
    if tap is not None and (len(tap.encode()) > 15 or "/" in tap or " " in tap):
        raise ConfigError(f"--net: tap={tap!r} must be an interface name of at most 15 characters")
    mac = o.get("mac")
    if mac is not None:
        if not _MAC.match(mac):
            raise ConfigError(f"--net: mac={mac!r} is not six hex bytes like 52:54:00:12:34:56")
        if int(mac[:2], 16) & 1:
            raise ConfigError(f"--net: mac={mac!r} is a multicast address")
        mac = mac.lower()
    bridge = o.get("bridge") or None
    if bridge is not None and (len(bridge.encode()) > 15 or "/" in bridge or " " in bridge):
        raise ConfigError(f"--net: bridge={bridge!r} must be an interface name of at most 15 characters")
    fd = o.get("fd")
    if fd is not None and not fd.isdigit():
        raise ConfigError(f"--net: fd={fd!r} must be the number of an open tap descriptor")
    return NetSpec(tap, mac, bridge, int(fd) if fd is not None else None)


def parse_console(text: str) -> ConsoleSpec:
    o = _options("--console", text, {"type", "out"}, bare="type")
    kind = o.get("type", "virtio")
    if kind != "virtio":
        raise ConfigError(f"--console: type {kind!r} is not supported here (only virtio)")
    return ConsoleSpec(o.get("out") or None)


def parse_balloon(text: str = "") -> BalloonSpec:
    o = _options("--balloon", text, {"deflate-on-oom"})
    return BalloonSpec(_bool("--balloon", "deflate-on-oom", o["deflate-on-oom"])
                       if "deflate-on-oom" in o else True)


def parse_vsock(text: str) -> VsockSpec:
    o = _options("--vsock", text, {"cid", "uds"})
    if "cid" not in o or "uds" not in o:
        raise ConfigError("--vsock: both cid=N and uds=PATH are required")
    try:
        cid = int(o["cid"], 0)
    except ValueError:
        raise ConfigError(f"--vsock: cid={o['cid']!r} is not a number") from None
    if not 3 <= cid < 0xFFFFFFFF:
        raise ConfigError(f"--vsock: cid={cid} must be at least 3 (0-2 are reserved) and below 2^32-1")
    if not o["uds"] or len(o["uds"].encode()) > 100:
        raise ConfigError(f"--vsock: uds={o['uds']!r} must be a socket path of at most 100 bytes")
    return VsockSpec(cid, o["uds"])


def parse_transport(text: str) -> str:
    if text not in ("pci", "mmio"):
        raise ConfigError(f"--virtio-transport: {text!r} must be pci or mmio")
    return text


def parse_mac(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))
