"""Build the tiny test guests (static ELF64 'kernels' linked at physical
addresses) with the host's gcc; cached by source hash."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).parent
GUESTS = ("hello", "counter", "smp", "ring3", "serial", "echo", "acpi")


def build(name: str, out_dir: Path) -> Path:
    src = HERE / f"{name}.S"
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in
                                     (src, HERE / "common.inc", HERE / "lib.inc"))).hexdigest()[:16]
    out = out_dir / f"{name}-{digest}.elf"
    if out.exists():
        return out
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is needed to build the test guests")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    subprocess.run(["gcc", "-nostdlib", "-static", "-no-pie", "-I", str(HERE),
                    "-Wl,-Ttext=0x100000", "-Wl,--section-start=.tramp=0x8000",
                    "-Wl,--build-id=none", "-Wl,-z,max-page-size=0x1000",
                    "-o", str(tmp), str(src)], check=True, capture_output=True, text=True)
    tmp.rename(out)
    return out
