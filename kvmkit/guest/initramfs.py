"""Assemble a guest's initramfs: static busybox, its applet links, ``/init``.

The archive is uncompressed on purpose: on emulating hosts the guest kernel
would spend its own (slow, emulated) instructions on decompression, while an
uncompressed newc archive is only copied. Device nodes are written into the
archive by :mod:`kvmkit.guest.cpio`, so no root and no ``mknod`` are needed.
"""

from __future__ import annotations

import base64
import subprocess
import urllib.parse
from pathlib import Path

from kvmkit.guest import cpio, debian
from kvmkit.guest.errors import GuestBuildError

BUSYBOX_PACKAGE = "busybox-static"
INIT_SCRIPT = Path(__file__).with_name("init.sh")
MODULE_LIST = "etc/kvmkit/modules"

_DIRS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "etc", "etc/kvmkit", "lib",
         "lib/modules", "proc", "sys", "tmp", "root", "mnt", "run", "var")


def run_parameter(command: str, encoding: str = "b64") -> str:
    """The ``kvmkit.run=...`` kernel parameter that makes /init run ``command``.

    ``b64`` survives any byte; ``url`` stays readable in logs. Both contain no
    spaces, so the kernel passes the parameter through as one word.
    """
    if encoding == "b64":
        return "kvmkit.run=b64:" + base64.b64encode(command.encode()).decode()
    if encoding == "url":
        return "kvmkit.run=" + urllib.parse.quote_plus(command, safe="")
    raise ValueError(f"unknown kvmkit.run encoding {encoding!r} (b64 or url)")


def fetch_busybox(version: str, debs: Path, scratch: Path) -> bytes:
    """The static busybox binary from the ``busybox-static`` package."""
    deb = debian.download(BUSYBOX_PACKAGE, version, debs)
    binary = debian.unpack(deb, scratch) / "bin/busybox"
    if not binary.exists():
        raise GuestBuildError(f"{deb.name} contains no bin/busybox")
    return binary.read_bytes()


def applets(busybox: Path) -> list[str]:
    """Install paths of busybox's applets (``bin/sh``, ``sbin/poweroff``...).

    Asked of the binary itself (it is static and runs on the host), so the
    links match whatever applets this build of busybox has.
    """
    proc = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise GuestBuildError(f"{busybox} --list-full failed: {proc.stderr.strip()}")
    return [p for p in proc.stdout.split() if "/" in p and p != "bin/busybox"]


def entries(busybox: bytes, applet_paths: list[str], init: bytes,
            modules: dict[str, bytes] | None = None) -> list[cpio.Entry]:
    """The archive's members, parents before children.

    ``modules`` maps paths relative to ``/lib/modules`` to module contents, in
    load order; their order is written to ``/etc/kvmkit/modules`` for /init.
    """
    dirs = set(_DIRS)
    for path in [*applet_paths, *(f"lib/modules/{m}" for m in modules or {})]:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    out = [cpio.directory(d, 0o1777 if d == "tmp" else 0o755) for d in sorted(dirs)]
    out += [cpio.char_device("dev/console", 5, 1, 0o600), cpio.char_device("dev/null", 1, 3, 0o666),
            cpio.regular("bin/busybox", busybox, 0o755), cpio.regular("init", init, 0o755)]
    out += [cpio.symlink(p, "/bin/busybox") for p in sorted(set(applet_paths))]
    if modules:
        out += [cpio.regular(f"lib/modules/{name}", data) for name, data in modules.items()]
        out.append(cpio.regular(MODULE_LIST, "".join(f"{m}\n" for m in modules).encode()))
    return out


def write_initramfs(dest: Path, members: list[cpio.Entry]) -> Path:
    """Write the newc archive to ``dest`` atomically."""
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "wb") as fh:
        cpio.write(fh, members)
    tmp.replace(dest)
    return dest
