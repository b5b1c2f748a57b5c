"""Debian's stock kernel as a guest: the image, its ELF, and its virtio modules.

The stock guest proves kvmkit runs an unmodified distro kernel. Debian builds
virtio as modules, so the initramfs must carry them and load them in
dependency order; the order comes from the modules' own ``depends=`` fields
rather than a hand-kept list, so a new kernel version with new dependencies
still loads.
"""

from __future__ import annotations

import lzma
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

from kvmkit.guest import debian
from kvmkit.guest.bzimage import write_vmlinux
from kvmkit.guest.errors import GuestBuildError

METAPACKAGE = "linux-image-amd64"
IMAGE_PATTERN = r"linux-image-6\.1\.[0-9][^ ]*-amd64"

#: The modules the guest wants; their dependencies are added from their modinfo.
WANTED_MODULES = (
    "virtio", "virtio_ring", "virtio_pci", "virtio_pci_modern_dev", "virtio_pci_legacy_dev",
    "virtio_mmio", "virtio_blk", "virtio_net", "net_failover", "failover", "virtio_console",
    "virtio_rng", "rng-core", "virtio_balloon", "vsock", "vmw_vsock_virtio_transport_common",
    "vmw_vsock_virtio_transport",
)


def image_package() -> tuple[str, str]:
    """(name, version) of the versioned kernel package behind linux-image-amd64."""
    name = debian.resolve_dependency(METAPACKAGE, IMAGE_PATTERN)
    return name, debian.candidate_version(name)


def module_name(path: str) -> str:
    """``kernel/drivers/virtio/virtio_pci.ko.xz`` -> ``virtio_pci``."""
    base = path.rsplit("/", 1)[-1]
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _key(name: str) -> str:
    # modprobe treats '-' and '_' in module names as the same character.
    return name.replace("-", "_")


def modinfo(module: bytes) -> dict[str, str]:
    """The ``.modinfo`` key=value strings of a module (an ELF64 relocatable).

    Debian's package ships no modules.dep (depmod makes it at install time),
    so dependencies are read from each module's own ``depends=`` field.
    """
    if module[:4] != b"\x7fELF" or module[4] != 2:
        raise GuestBuildError("not a 64-bit ELF kernel module")
    shoff, = struct.unpack_from("<Q", module, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", module, 0x3A)

    def section(index: int) -> tuple[int, int, int]:
        name, _, _, _, offset, size = struct.unpack_from("<IIQQQQ", module, shoff + index * shentsize)
        return name, offset, size

    _, str_off, _ = section(shstrndx)
    for index in range(shnum):
        name, offset, size = section(index)
        if module[str_off + name:].split(b"\0", 1)[0] == b".modinfo":
            fields = module[offset:offset + size].split(b"\0")
            pairs = (f.decode(errors="replace").partition("=") for f in fields if b"=" in f)
            return {k: v for k, _, v in pairs}
    return {}


def load_order(wanted: tuple[str, ...], index: dict[str, str], depends: Callable[[str], list[str]],
               builtins: set[str]) -> list[str]:
    """Module paths to insmod, dependencies first.

    ``index`` maps module names to paths; ``depends(path)`` gives a module's
    dependencies by name. Built-in modules need no loading and are skipped; a
    module that is neither built in nor in the index is an error naming it.
    """
    index = {_key(k): v for k, v in index.items()}
    builtins = {_key(b) for b in builtins}
    order: list[str] = []

    def visit(name: str, stack: tuple[str, ...]) -> None:
        key = _key(name)
        if key in builtins:
            return
        if key not in index:
            raise GuestBuildError(f"module {name} is neither built into the kernel nor in its package")
        path = index[key]
        if path in order:
            return
        if key in stack:
            raise GuestBuildError(f"module dependency cycle through {name}")
        for dep in depends(path):
            visit(dep, (*stack, key))
        order.append(path)

    for name in wanted:
        visit(name, ())
    return order


def _read_module(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko"):
        return data
    raise GuestBuildError(f"cannot decompress module {path.name} (only .ko and .ko.xz are handled)")


def prepare(deb: Path, out: Path, scratch: Path) -> tuple[str, list[str]]:
    """Unpack the kernel package into ``scratch`` and fill ``out``.

    ``out`` gets ``bzImage`` (the package's vmlinuz), ``vmlinux`` (its ELF) and
    ``modules/<release>/kernel/.../<name>.ko`` for the wanted modules. Returns the kernel release
    and the module paths relative to ``out/modules`` in load order.
    """
    shutil.rmtree(scratch, ignore_errors=True)
    root = debian.unpack(deb, scratch)
    images = sorted((root / "boot").glob("vmlinuz-*"))
    if not images:
        raise GuestBuildError(f"{deb.name} contains no boot/vmlinuz-*")
    release = images[0].name.removeprefix("vmlinuz-")
    shutil.copy2(images[0], out / "bzImage")
    write_vmlinux(out / "bzImage", out / "vmlinux")
    moddir = root / "lib/modules" / release
    index = {module_name(str(p)): str(p.relative_to(moddir)) for p in (moddir / "kernel").rglob("*.ko*")}
    builtin = moddir / "modules.builtin"
    builtins = {module_name(p) for p in builtin.read_text().split()} if builtin.exists() else set()

    def depends(rel: str) -> list[str]:
        return [d for d in modinfo(_read_module(moddir / rel)).get("depends", "").split(",") if d]

    order = load_order(WANTED_MODULES, index, depends, builtins)
    loaded = []
    for rel in order:
        # Laid out as on a Debian system, so modprobe/depmod in the guest work too.
        target = out / "modules" / release / (rel.rsplit(".ko", 1)[0] + ".ko")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(_read_module(moddir / rel))
        loaded.append(str(target.relative_to(out / "modules")))
    shutil.rmtree(scratch, ignore_errors=True)
    return release, loaded
