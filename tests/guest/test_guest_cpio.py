"""The newc writer, read back by GNU cpio (an independent reader)."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest

from kvmkit.guest import cpio


def _archive(entries: list[cpio.Entry]) -> bytes:
    buf = io.BytesIO()
    cpio.write(buf, entries)
    return buf.getvalue()


SAMPLE = [
    cpio.directory("bin"),
    cpio.directory("tmp", 0o1777),
    cpio.regular("bin/tool", b"#!/bin/sh\necho hi\n", 0o755),
    cpio.regular("data", b"x" * 1001),  # odd size: exercises padding
    cpio.regular("empty", b""),
    cpio.symlink("bin/sh", "/bin/tool"),
    cpio.char_device("console", 5, 1),
    cpio.char_device("null", 1, 3, 0o666),
]


def test_gnu_cpio_lists_entries_with_modes_owners_and_devices(cpio_tool: str) -> None:
    listing = subprocess.run([cpio_tool, "-t", "-v", "--numeric-uid-gid"], input=_archive(SAMPLE),
                             capture_output=True, check=True).stdout.decode().splitlines()
    by_name = {line.split()[-1] if " -> " not in line else line.split()[-3]: line for line in listing}
    assert list(by_name) == ["bin", "tmp", "bin/tool", "data", "empty", "bin/sh", "console", "null"]
    assert by_name["bin/tool"].startswith("-rwxr-xr-x   1 0        0 ")
    assert by_name["tmp"].startswith("drwxrwxrwt")
    assert by_name["bin/sh"].startswith("lrwxrwxrwx") and by_name["bin/sh"].endswith("-> /bin/tool")
    assert by_name["console"].startswith("crw-------") and " 5,   1 " in by_name["console"]
    assert by_name["null"].startswith("crw-rw-rw-") and " 1,   3 " in by_name["null"]


def test_gnu_cpio_extracts_contents_and_permissions(cpio_tool: str, tmp_path: Path) -> None:
    files = [e for e in SAMPLE if not stat.S_ISCHR(e.mode)]  # mknod would need root
    subprocess.run([cpio_tool, "-i", "-d", "--no-absolute-filenames", "--quiet"], input=_archive(files),
                   cwd=tmp_path, check=True)
    assert (tmp_path / "bin/tool").read_bytes() == b"#!/bin/sh\necho hi\n"
    assert stat.S_IMODE((tmp_path / "bin/tool").stat().st_mode) == 0o755
    assert (tmp_path / "data").read_bytes() == b"x" * 1001
    assert (tmp_path / "empty").read_bytes() == b""
    assert os.readlink(tmp_path / "bin/sh") == "/bin/tool"


def test_archive_layout_is_aligned_and_reproducible() -> None:
    data = _archive(SAMPLE)
    assert data.startswith(b"070701") and len(data) % 4 == 0
    assert data == _archive(SAMPLE)
    assert b"TRAILER!!!\0" in data[-128:]


@pytest.mark.parametrize("name", ["", "bin", "/bin"])
def test_empty_or_repeated_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError):
        _archive([cpio.directory("bin"), cpio.directory(name)])
