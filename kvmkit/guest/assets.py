"""The guests kvmkit boots, built on demand and cached: the public API.

``fast_guest()`` and ``stock_guest()`` return paths the VMM can load. They
resolve the Debian package versions first (cheap apt queries), derive the
cache keys from those versions plus the in-tree config fragment and init
script, and build only what is missing; ``build=False`` never builds, so a
caller such as ``kvmkit run`` can explain which command would.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kvmkit.errors import ConfigError
from kvmkit.guest import debian, initramfs, kbuild, stock
from kvmkit.guest.cache import (cache_dir, cache_key, locked, prune, read_manifest, staging,
                                write_manifest)
from kvmkit.guest.errors import GuestBuildError, PackageFetchError
from kvmkit.guest.progress import Progress

GUEST_NAMES = ("fast", "stock")
# rodata=off and retain_initrd: the kernel neither splits its direct map to
# write-protect itself nor poisons and frees the initramfs pages (seconds of
# emulated work on hosts whose KVM emulates guest kernel code).
BASE_CMDLINE = "console=ttyS0 panic=-1 rodata=off retain_initrd"
# Guest RAM (QEMU's and Firecracker's default too): on emulating hosts every
# MiB costs boot time (struct pages, the buddy allocator).  The stock kernel
# and its module-laden initramfs want more.
MEMORY = {"fast": "128M", "stock": "512M"}


@dataclass(frozen=True)
class GuestAssets:
    """Everything needed to boot one guest. Host workarounds are the VMM's business."""

    name: str
    bzimage: Path
    vmlinux: Path
    initrd: Path
    cmdline: str
    memory: str = "128M"          # the guest RAM it is made for (and `kvmkit run` gives it)


@dataclass(frozen=True)
class _Plan:
    """A guest's resolved inputs: where its artefacts live and how to make them."""

    name: str
    kernel_dir: Path
    initrd: Path
    busybox_version: str
    build_kernel: Callable[[Path, Progress, bool], dict[str, object]]
    initrd_modules: bool


def _note(progress: bool | None, message: str) -> None:
    """Status lines go to stderr unless the caller asked for silence."""
    if progress is not False:
        print(f"kvmkit: {message}", file=sys.stderr, flush=True)


def _fast_plan() -> _Plan:
    source = kbuild.source_version()
    key = cache_key(guest="fast", source=source, fragment=kbuild.FRAGMENT.read_bytes(),
                    toolchain=kbuild.toolchain_id())
    root = cache_dir() / "fast"

    def build(out: Path, progress: Progress, force: bool) -> dict[str, object]:
        kbuild.check_tools()
        work = cache_dir() / "work"
        tree = kbuild.source_tree(source, cache_dir() / "debs", work, progress)
        objdir = work / f"fast-build-{source.replace(':', '_')}"
        if force:
            shutil.rmtree(objdir, ignore_errors=True)
        log = root / "build.log"
        log.write_text(f"kvmkit fast guest kernel, linux-source-6.1 {source}\n")
        progress.label = f"building fast guest kernel (log: {log})"
        kbuild.build_kernel(tree, objdir, out, log, progress)
        prune(work, "linux-source-", tree.name)
        prune(work, "fast-build-", objdir.name)
        return {"source_package": f"{kbuild.SOURCE_PACKAGE} {source}"}

    return _plan("fast", root, key, build, initrd_modules=False)


def _stock_plan() -> _Plan:
    package, version = stock.image_package()
    key = cache_key(guest="stock", image=f"{package} {version}", modules=" ".join(stock.WANTED_MODULES))
    root = cache_dir() / "stock"

    def build(out: Path, progress: Progress, force: bool) -> dict[str, object]:
        progress.update(f"downloading {package} {version}")
        deb = debian.download(package, version, cache_dir() / "debs")
        progress.update(f"unpacking {deb.name}")
        release, modules = stock.prepare(deb, out, cache_dir() / "work" / "stock-unpack")
        prune(cache_dir() / "debs", "linux-image-", deb.name)
        return {"package": f"{package} {version}", "release": release, "modules": modules}

    return _plan("stock", root, key, build, initrd_modules=True)


def _plan(name: str, root: Path, kernel_key: str, build: Callable[[Path, Progress, bool], dict[str, object]],
          initrd_modules: bool) -> _Plan:
    busybox = debian.candidate_version(initramfs.BUSYBOX_PACKAGE)
    initrd_key = cache_key(guest=name, kernel=kernel_key, busybox=busybox,
                           rootfs=initramfs.rootfs_digest(), probe=initramfs.PROBE_SOURCE.read_bytes())
    return _Plan(name, root / f"kernel-{kernel_key}", root / f"initrd-{initrd_key}.cpio", busybox,
                 build, initrd_modules)


def _assets(plan: _Plan) -> GuestAssets:
    return GuestAssets(plan.name, plan.kernel_dir / "bzImage", plan.kernel_dir / "vmlinux",
                       plan.initrd, BASE_CMDLINE, MEMORY[plan.name])


def _is_built(plan: _Plan) -> bool:
    return read_manifest(plan.kernel_dir) is not None and plan.initrd.exists()


def _latest_built(name: str) -> GuestAssets | None:
    """The newest complete build of ``name``, for when apt cannot be asked."""
    root = cache_dir() / name
    kernels = sorted((d for d in root.glob("kernel-*") if read_manifest(d) is not None),
                     key=lambda d: d.stat().st_mtime)
    initrds = sorted(root.glob("initrd-*.cpio"), key=lambda f: f.stat().st_mtime)
    if not kernels or not initrds:
        return None
    return GuestAssets(name, kernels[-1] / "bzImage", kernels[-1] / "vmlinux", initrds[-1], BASE_CMDLINE,
                       MEMORY[name])


def _build_initrd(plan: _Plan) -> None:
    scratch = cache_dir() / "work" / "busybox-unpack"
    shutil.rmtree(scratch, ignore_errors=True)
    busybox = initramfs.fetch_busybox(plan.busybox_version, cache_dir() / "debs", scratch)
    applets = initramfs.applets(scratch / "bin/busybox")
    shutil.rmtree(scratch, ignore_errors=True)
    modules: dict[str, bytes] = {}
    if plan.initrd_modules:
        manifest = read_manifest(plan.kernel_dir) or {}
        modules = {m: (plan.kernel_dir / "modules" / m).read_bytes() for m in manifest.get("modules", [])}
    files = {**initramfs.rootfs_files(),
             initramfs.PROBE_PATH: (initramfs.build_probe(cache_dir() / "work" / "probe"), 0o755)}
    members = initramfs.entries(busybox, applets, files, modules)
    initramfs.write_initramfs(plan.initrd, members)
    prune(plan.initrd.parent, "initrd-", plan.initrd.name)


def _ensure(plan: _Plan, progress: bool | None, force: bool) -> GuestAssets:
    with locked(plan.name):
        if force or read_manifest(plan.kernel_dir) is None:
            started = time.monotonic()
            _note(progress, f"building the {plan.name} guest kernel (once; cached in {plan.kernel_dir.parent})")
            display = Progress(f"building {plan.name} guest kernel", progress)
            try:
                with staging(plan.kernel_dir) as out:
                    info = plan.build_kernel(out, display, force)
                    info["seconds"] = round(time.monotonic() - started, 1)
                    write_manifest(out, info)
            finally:
                display.done()
            prune(plan.kernel_dir.parent, "kernel-", plan.kernel_dir.name)
            _note(progress, f"{plan.name} guest kernel built in {time.monotonic() - started:.0f} s")
        if force or not plan.initrd.exists():
            _build_initrd(plan)
    return _assets(plan)


def _guest(name: str, make_plan: Callable[[], _Plan], build: bool, progress: bool | None,
           force: bool) -> GuestAssets:
    hint = f"run `kvmkit guest build {name}`"
    try:
        plan = make_plan()
    except PackageFetchError as err:
        if build:
            raise
        fallback = _latest_built(name)
        if fallback is not None:
            return fallback
        raise ConfigError(f"the {name} guest is not built and apt cannot be asked ({err}): {hint}") from None
    if not build:
        if not _is_built(plan):
            raise ConfigError(f"the {name} guest is not built (or its inputs changed): {hint}")
        return _assets(plan)
    try:
        return _ensure(plan, progress, force)
    except GuestBuildError:
        raise
    except OSError as err:
        raise GuestBuildError(f"building the {name} guest failed: {err}") from err


def fast_guest(build: bool = True, progress: bool | None = None, force: bool = False) -> GuestAssets:
    """The small kernel kvmkit's tests boot, built from linux-source-6.1 if needed.

    ``build=False`` raises ConfigError naming the build command instead of
    building. ``progress``: None shows a spinner only on a terminal, False is
    silent, True forces it. ``force`` rebuilds from a clean object directory.
    """
    return _guest("fast", _fast_plan, build, progress, force)


def stock_guest(build: bool = True, progress: bool | None = None, force: bool = False) -> GuestAssets:
    """Debian's stock kernel with an ELF vmlinux and an initramfs carrying its virtio modules."""
    return _guest("stock", _stock_plan, build, progress, force)


def guest(name: str, build: bool = True, progress: bool | None = None, force: bool = False) -> GuestAssets:
    """``fast_guest`` or ``stock_guest`` by name (for the CLI and the VMM's defaults)."""
    if name == "fast":
        return fast_guest(build, progress, force)
    if name == "stock":
        return stock_guest(build, progress, force)
    raise ConfigError(f"unknown guest {name!r} (choose from {', '.join(GUEST_NAMES)})")
