"""The stock guest's module selection: dependency order, built-ins, real modinfo."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmkit.guest import stock
from kvmkit.guest.errors import GuestBuildError

INDEX = {"virtio": "v.ko", "virtio_ring": "vr.ko", "virtio_net": "vn.ko", "net_failover": "nf.ko",
         "failover": "f.ko", "virtio-rng": "rng.ko"}
DEPS = {"v.ko": ["virtio_ring"], "vn.ko": ["net_failover", "virtio", "virtio_ring"],
        "nf.ko": ["failover"], "rng.ko": ["rng-core", "virtio"]}


def _deps(path: str) -> list[str]:
    return DEPS.get(path, [])


def test_dependencies_come_first_and_once() -> None:
    order = stock.load_order(("virtio_net", "virtio_rng", "virtio"), INDEX, _deps, {"rng_core"})
    assert order == ["f.ko", "nf.ko", "vr.ko", "v.ko", "vn.ko", "rng.ko"]


def test_missing_module_is_named() -> None:
    with pytest.raises(GuestBuildError, match="rng-core"):
        stock.load_order(("virtio_rng",), INDEX, _deps, set())


def test_cycle_is_reported() -> None:
    with pytest.raises(GuestBuildError, match="cycle"):
        stock.load_order(("a",), {"a": "a.ko", "b": "b.ko"}, {"a.ko": ["b"], "b.ko": ["a"]}.__getitem__, set())


def test_module_names() -> None:
    assert stock.module_name("kernel/drivers/char/hw_random/virtio-rng.ko.xz") == "virtio-rng"
    assert stock.module_name("virtio_pci.ko") == "virtio_pci"


def test_real_kernel_package_gives_elf_and_loadable_modules(stock_kernel_deb: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    release, modules = stock.prepare(stock_kernel_deb, out, tmp_path / "scratch")
    assert (out / "vmlinux").read_bytes()[:4] == b"\x7fELF"
    assert (out / "bzImage").read_bytes()[0x202:0x206] == b"HdrS"
    names = [stock.module_name(m).replace("-", "_") for m in modules]
    for wanted in ("virtio", "virtio_ring", "virtio_pci", "virtio_mmio", "virtio_blk", "virtio_net",
                   "virtio_console", "virtio_balloon", "vsock", "vmw_vsock_virtio_transport"):
        assert wanted in names
    # Every dependency of a bundled module is loaded before it (or built in).
    for position, rel in enumerate(modules):
        assert rel.startswith(f"{release}/kernel/") and rel.endswith(".ko")
        info = stock.modinfo((out / "modules" / rel).read_bytes())
        assert info.get("vermagic", "").startswith(release.split("-")[0])
        for dep in filter(None, info.get("depends", "").split(",")):
            earlier = names[:position]
            assert dep.replace("-", "_") in earlier or dep.replace("-", "_") not in names
    assert not (tmp_path / "scratch").exists()
