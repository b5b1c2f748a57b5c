"""Cache location, keys and atomic publication."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmkit.guest import cache


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir() == tmp_path / "kvmkit" / "guests"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_dir() == tmp_path / "home" / ".cache" / "kvmkit" / "guests"


def test_key_is_stable_and_changes_with_every_input(monkeypatch: pytest.MonkeyPatch) -> None:
    base = dict(source="6.1.192-2", fragment=b"CONFIG_SMP=y\n", toolchain="gcc 12.2.0")
    key = cache.cache_key(**base)
    assert key == cache.cache_key(**dict(reversed(list(base.items()))))
    for name, changed in [("source", "6.1.193-1"), ("fragment", b"CONFIG_SMP=n\n"), ("toolchain", "gcc 13")]:
        assert cache.cache_key(**{**base, name: changed}) != key, name
    assert cache.cache_key(**base, init=b"") != key
    assert cache.cache_key(a="xy", b="") != cache.cache_key(a="x", b="y")
    monkeypatch.setattr(cache, "BUILDER_VERSION", "999")
    assert cache.cache_key(**base) != key


def test_staging_publishes_only_on_success(tmp_path: Path) -> None:
    final = tmp_path / "kernel-abc"
    with pytest.raises(RuntimeError):
        with cache.staging(final) as out:
            (out / "bzImage").write_bytes(b"half")
            raise RuntimeError("build failed")
    assert not final.exists() and list(tmp_path.iterdir()) == []
    with cache.staging(final) as out:
        (out / "bzImage").write_bytes(b"whole")
        cache.write_manifest(out, {"seconds": 1})
    assert (final / "bzImage").read_bytes() == b"whole"
    assert cache.read_manifest(final) == {"seconds": 1}
    assert cache.read_manifest(tmp_path / "missing") is None


def test_prune_keeps_the_current_key(tmp_path: Path) -> None:
    for name in ("kernel-old", "kernel-new", "initrd-old.cpio", "other"):
        (tmp_path / name).mkdir() if name.startswith("kernel") else (tmp_path / name).write_text("")
    cache.prune(tmp_path, "kernel-", "kernel-new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["initrd-old.cpio", "kernel-new", "other"]


def test_progress_draws_only_when_enabled() -> None:
    import io

    from kvmkit.guest.progress import Progress

    quiet, shown = io.StringIO(), io.StringIO()
    Progress("build", enabled=False, stream=quiet).update("CC kernel/fork.o")
    bar = Progress("build", enabled=True, stream=shown)
    bar.update("  CC      kernel/fork.o\n")
    bar.done()
    assert quiet.getvalue() == ""
    assert shown.getvalue().startswith("\r") and "build 00:00  CC      kernel/fork.o" in shown.getvalue()
    assert shown.getvalue().endswith("\r")
