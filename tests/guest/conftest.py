"""Shared fixtures: real Debian packages, fetched once into the user's cache.

Tests that need the archive skip (with the reason) when apt cannot reach it,
rather than fail: an offline laptop is not a broken build.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kvmkit.guest import debian, initramfs, stock
from kvmkit.guest.cache import cache_dir
from kvmkit.guest.errors import PackageFetchError


def _fetch(package: str, version: str | None = None) -> Path:
    try:
        return debian.download(package, version or debian.candidate_version(package), cache_dir() / "debs")
    except PackageFetchError as err:
        pytest.skip(f"cannot fetch {package} from the Debian archive: {err}")


@pytest.fixture(scope="session")
def stock_kernel_deb() -> Path:
    """The versioned linux-image-6.1.*-amd64 .deb (downloaded once, cached)."""
    try:
        name, version = stock.image_package()
    except PackageFetchError as err:
        pytest.skip(f"apt cannot resolve {stock.METAPACKAGE}: {err}")
    return _fetch(name, version)


@pytest.fixture(scope="session")
def busybox_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/busybox from busybox-static, unpacked into a temporary directory."""
    deb = _fetch(initramfs.BUSYBOX_PACKAGE)
    root = debian.unpack(deb, tmp_path_factory.mktemp("busybox"))
    return root / "bin/busybox"


@pytest.fixture(scope="session")
def cpio_tool() -> str:
    """GNU cpio, to read our archives back with an independent implementation."""
    path = shutil.which("cpio")
    if path is None:
        pytest.skip("GNU cpio is not installed (apt-get install cpio)")
    return path
