"""Build the tiny test guests (static ELF64 'kernels' linked at physical
addresses) with the host's gcc; cached by source hash."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

HERE = Path(__file__).parent
GUESTS = ("hello", "counter", "idle", "smp", "ring3", "serial", "echo", "acpi", "syscall", "syscall_step",
           "syscall_reset", "xsave", "memwriter", "ksm", "ticker")
# Guests built from another guest's source with preprocessor defines.
VARIANTS = {"syscall_step": ("syscall", ("-DPF_STEP",)), "syscall_reset": ("syscall", ("-DRESET_AT_END",)),
            "ksm": ("idle", ("-DKSM_PATTERN",))}


def build(name: str, out_dir: Path) -> Path:
    base, defines = VARIANTS.get(name, (name, ()))
    src = HERE / f"{base}.S"
    inputs = [src, HERE / "common.inc", HERE / "lib.inc"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in inputs) + " ".join(defines).encode()
                            ).hexdigest()[:16]
    out = out_dir / f"{name}-{digest}.elf"
    if out.exists():
        return out
    if shutil.which("gcc") is None:
        raise RuntimeError("gcc is needed to build the test guests")
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    subprocess.run(["gcc", "-nostdlib", "-static", "-no-pie", "-I", str(HERE),
                    *defines, "-Wl,-Ttext=0x100000", "-Wl,--section-start=.tramp=0x8000",
                    "-Wl,--section-start=.user=0x400000",
                    "-Wl,--build-id=none", "-Wl,-z,max-page-size=0x1000",
                    "-o", str(tmp), str(src)], check=True, capture_output=True, text=True)
    tmp.rename(out)
    return out
