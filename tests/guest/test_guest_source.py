"""Getting the kernel source without linux-source-6.1 installed (apt-get download path)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmkit.guest import debian, kbuild
from kvmkit.guest.cache import cache_dir
from kvmkit.guest.errors import PackageFetchError
from kvmkit.guest.progress import Progress


@pytest.mark.slow
def test_source_tree_from_downloaded_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(kbuild, "INSTALLED_TARBALL", Path("/nonexistent/usr/src/linux-source-6.1.tar.xz"))
    try:
        version = debian.candidate_version(kbuild.SOURCE_PACKAGE)
        tree = kbuild.source_tree(version, cache_dir() / "debs", tmp_path, Progress("test", enabled=False))
    except PackageFetchError as err:
        pytest.skip(f"cannot fetch {kbuild.SOURCE_PACKAGE}: {err}")
    assert (tree / "Makefile").read_text().startswith("# SPDX")
    assert (tree / "scripts/kconfig/merge_config.sh").exists()
    assert (tree / ".kvmkit-extracted").read_text().strip() == version
    assert not (tmp_path / "linux-source-deb").exists()
    # A second call reuses the tree instead of extracting again.
    assert kbuild.source_tree(version, cache_dir() / "debs", tmp_path, Progress("test", enabled=False)) == tree
