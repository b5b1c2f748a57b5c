"""Connecting to a unix socket whose path is longer than ``sun_path``.

A state directory can live anywhere, and ``sun_path`` holds only 107 bytes.
The VMM binds its sockets relative to its working directory (its run
directory), so the bind never sees the long path; a client goes through
``/proc/self/fd/N/NAME`` with ``N`` an ``O_PATH`` descriptor of the
directory, which is short whatever the directory's real path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

SUN_PATH_MAX = 107


@contextlib.contextmanager
def short_path(path: Path) -> Iterator[str]:
    """A path to ``path`` that fits in ``sun_path``, valid inside the block."""
    text = str(path)
    if len(text.encode()) <= SUN_PATH_MAX:
        yield text
        return
    fd = os.open(Path(path).parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{Path(path).name}"
    finally:
        os.close(fd)
