"""``kvmkit guest``: exit statuses and one-line errors, on an empty and a built cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmkit.errors import ConfigError
from kvmkit.guest import assets, kbuild


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kvmkit.cli.guest", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=120)


def test_path_on_empty_cache_fails_with_one_line_naming_the_command(tmp_path: Path) -> None:
    proc = _cli("path", "fast", env={"XDG_CACHE_HOME": str(tmp_path)})
    assert proc.returncode != 0 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmkit guest: error: ")
    assert "kvmkit guest build fast" in lines[0] and "Traceback" not in proc.stderr


def test_unknown_guest_is_a_usage_error() -> None:
    proc = _cli("build", "huge")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_api_without_build_raises_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for factory, name in ((assets.fast_guest, "fast"), (assets.stock_guest, "stock")):
        with pytest.raises(ConfigError, match=f"kvmkit guest build {name}"):
            factory(build=False)
    assert not (tmp_path / "kvmkit" / "guests" / "fast").exists()


@pytest.mark.slow
def test_built_fast_guest_is_reused_and_printed() -> None:
    built = assets.fast_guest(build=True, progress=False)  # builds once if the cache is empty
    started = time.monotonic()
    proc = _cli("build", "fast")
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - started < 60  # a cache hit, not a kernel build
    assert f"fast.vmlinux: {built.vmlinux}" in proc.stdout
    assert _cli("path", "fast").stdout == proc.stdout
    assert built.vmlinux.read_bytes()[:4] == b"\x7fELF"
    config = kbuild.parse_config((built.vmlinux.parent / "config").read_text())
    assert kbuild.dropped_options(kbuild.parse_config(kbuild.FRAGMENT.read_text()), config) == []
