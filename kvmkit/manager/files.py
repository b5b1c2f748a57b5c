"""The manager's metadata on disk, never half-written (the writing itself is
:mod:`kvmkit.atomicfile`'s: a temporary file, fsync, rename, fsync the
directory).

A reader (or a manager killed at any instruction) sees the old version or
the new one, never a mix; a crash leaves at most a ``.tmp`` file, which
:func:`is_temporary` lets listings skip and the consistency check removes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kvmkit.atomicfile import TMP_MARK, atomic_write, fsync_dir, fsync_path, is_temporary  # noqa: F401


def write_json(path: Path, value: Any) -> None:
    atomic_write(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def read_json(path: Path, default: Any = None) -> Any:
    """The file's value, or ``default`` if it does not exist (or is not JSON:
    only files written by :func:`atomic_write` are read, so that means it
    was written by something else)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, NotADirectoryError):
        return default
    except ValueError:
        return default


def remove(path: Path) -> None:
    """Unlink and fsync the directory (a removal must survive a crash too)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    fsync_dir(Path(path).parent)
