"""Where guest assets live, how their cache keys are made, and locking.

Built files are large and machine-specific, so they live in the user's cache
directory, never in the tree. Each artefact sits in a directory named after a
hash of everything that went into it (package versions, the config fragment,
the init script, :data:`BUILDER_VERSION`), so changing any input selects a new
directory and an unchanged input finds the old one: "rebuild only when inputs
change" without timestamps.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: Bump when the build steps change in a way that alters the output.
BUILDER_VERSION = "2"

MANIFEST = "manifest.json"


def cache_dir() -> Path:
    """The root of kvmkit's guest cache: ``${XDG_CACHE_HOME:-~/.cache}/kvmkit/guests``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return Path(base) / "kvmkit" / "guests"


def cache_key(**inputs: str | bytes) -> str:
    """A short stable hash of named inputs (order-independent, builder-versioned).

    Bytes are hashed by content, strings by value; the names are part of the
    hash so that moving a value from one input to another changes the key.
    """
    digest = hashlib.sha256(f"kvmkit-guest-builder {BUILDER_VERSION}\n".encode())
    for name in sorted(inputs):
        value = inputs[name]
        data = value if isinstance(value, bytes) else value.encode()
        digest.update(f"{name} {len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def safe_name(text: str) -> str:
    """A version string made safe for a file name (Debian epochs contain ':')."""
    return "".join(c if c.isalnum() or c in "._+-" else "_" for c in text)


def read_manifest(directory: Path) -> dict[str, object] | None:
    """The manifest of a finished artefact directory, or None if unfinished."""
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


@contextmanager
def staging(final: Path) -> Iterator[Path]:
    """A scratch directory that becomes ``final`` only if the block succeeds.

    Readers only trust directories with a manifest, and the rename is atomic,
    so an interrupted build never leaves a half-written artefact behind.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(directory: Path, data: dict[str, object]) -> None:
    """Mark a staged directory complete (call last, inside :func:`staging`)."""
    (directory / MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@contextmanager
def locked(name: str) -> Iterator[None]:
    """Serialise builders of one artefact across processes (two shells, CI jobs)."""
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def prune(parent: Path, prefix: str, keep: str) -> None:
    """Remove stale siblings ``prefix*`` of the directory ``keep`` (old keys)."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if entry.name.startswith(prefix) and entry.name != keep:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
