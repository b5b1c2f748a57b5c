"""Shared helpers: qemu-img / qemu-io as the reference implementation.

Tests take the ``qemu`` fixture; it skips them where qemu-utils is missing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


class Qemu:
    def img(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(["qemu-img", *map(str, args)], capture_output=True, text=True,
                              timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"qemu-img {' '.join(map(str, args))} failed "
                                 f"({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def io(self, image: str | Path, *commands: str, fmt: str | None = None) -> str:
        args = ["qemu-io"]
        if fmt:
            args += ["-f", fmt]
        for c in commands:
            args += ["-c", c]
        proc = subprocess.run([*args, str(image)], capture_output=True, text=True, timeout=60)
        out = proc.stdout + proc.stderr
        if proc.returncode != 0 or "fail" in out.lower() or "error" in out.lower():
            raise AssertionError(f"qemu-io {commands} on {image}: {out}")
        return out

    def assert_clean(self, image: str | Path) -> None:
        proc = self.img("check", image, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def assert_same(self, a: str | Path, b: str | Path) -> None:
        proc = self.img("compare", a, b, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture
def qemu() -> Qemu:
    if shutil.which("qemu-img") is None or shutil.which("qemu-io") is None:
        pytest.skip("qemu-utils (qemu-img, qemu-io) is not installed")
    return Qemu()
