"""Assemble a guest's initramfs: static busybox, a few applet links, ``/init``.

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
# Files copied into the archive as they are (inittab, the start-up and
# console scripts, fstab, passwd...); /init is busybox's init.
ROOTFS = Path(__file__).with_name("rootfs")
# A tiny static program for what the shell cannot do (syscall loops, page
# faults, a segfault, the syscall trap's security case): /usr/bin/kvmkit-probe.
PROBE_SOURCE = Path(__file__).with_name("probe.S")
PROBE_PATH = "usr/bin/kvmkit-probe"
MODULE_LIST = "etc/kvmkit/modules"

_DIRS = ("bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "etc", "etc/kvmkit", "etc/acpi",
         "etc/acpi/PWRF", "lib", "lib/modules", "proc", "sys", "tmp", "root", "mnt", "run", "var")

# Links the archive carries.  Busybox's shell runs any applet by name without
# a link (FEATURE_SH_STANDALONE, on in Debian's busybox-static), and each link
# costs the guest kernel ~40 ms to unpack on emulating hosts, so only the
# names programs exec by absolute path are here.
LINKS = frozenset({"bin/sh", "bin/ash", "bin/ls", "bin/cat", "bin/mount", "bin/umount", "sbin/init",
                   "sbin/poweroff", "sbin/reboot", "sbin/halt", "sbin/insmod", "sbin/modprobe",
                   "usr/bin/env", "usr/bin/which", "usr/bin/nc", "sbin/ifconfig", "sbin/ip"})



def rootfs_files() -> dict[str, tuple[bytes, int]]:
    """``{archive path: (contents, mode)}`` of the files under :data:`ROOTFS`."""
    out = {}
    for path in sorted(ROOTFS.rglob("*")):
        if path.is_file():
            mode = 0o755 if path.stat().st_mode & 0o100 else 0o644
            out[path.relative_to(ROOTFS).as_posix()] = (path.read_bytes(), mode)
    return out


def rootfs_digest() -> bytes:
    """What the archive's own files contribute to its cache key."""
    return b"".join(name.encode() + b"\0" + data + bytes([mode & 0o100])
                    for name, (data, mode) in rootfs_files().items())


def build_probe(scratch: Path) -> bytes:
    """Assemble kvmkit-probe with the host's gcc (no libc: a few KB)."""
    scratch.mkdir(parents=True, exist_ok=True)
    out = scratch / "kvmkit-probe"
    proc = subprocess.run(["gcc", "-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-o", str(out),
                           str(PROBE_SOURCE)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise GuestBuildError(f"assembling {PROBE_SOURCE.name} failed: {proc.stderr.strip()}")
    return out.read_bytes()


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


def entries(busybox: bytes, applet_paths: list[str], files: dict[str, tuple[bytes, int]],
            modules: dict[str, bytes] | None = None) -> list[cpio.Entry]:
    """The archive's members, parents before children.

    ``modules`` maps paths relative to ``/lib/modules`` to module contents, in
    load order; their order is written to ``/etc/kvmkit/modules`` for /init.
    """
    dirs = set(_DIRS)
    applet_paths = [p for p in applet_paths if p in LINKS]
    for path in [*applet_paths, *files, *(f"lib/modules/{m}" for m in modules or {})]:
        parts = path.split("/")[:-1]
        dirs.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    out = [cpio.directory(d, 0o1777 if d == "tmp" else 0o755) for d in sorted(dirs)]
    out += [cpio.char_device("dev/console", 5, 1, 0o600), cpio.char_device("dev/null", 1, 3, 0o666),
            cpio.regular("bin/busybox", busybox, 0o755), cpio.symlink("init", "/bin/busybox"),
            *(cpio.regular(name, data, mode) for name, (data, mode) in files.items())]
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
