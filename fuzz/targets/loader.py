"""A kernel file is untrusted (``kvmkit run --kernel``): bzImage setup
headers and ELF program headers, parsed and then loaded into guest RAM."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

from kvmkit.arch.x86.loader import parse_kernel
from kvmkit.errors import KvmkitError
from kvmkit.memory.guest_memory import GuestMemory

from fuzz.harness import target

_DIR = tempfile.mkdtemp(prefix=f"kvmkit-fuzz-k{os.getpid()}-")
atexit.register(shutil.rmtree, _DIR, True)     # the scratch files go with the process
atexit.register(shutil.rmtree, _DIR, True)


@functools.lru_cache(maxsize=1)
def memory() -> GuestMemory:
    return GuestMemory.anonymous([(0, 32 << 20)])


def _seeds() -> list[bytes]:
    from kvmkit.guest.assets import fast_guest
    out = []
    try:
        g = fast_guest(build=False)
        for p in (getattr(g, "bzimage", None), g.vmlinux):
            if p is not None and os.path.exists(p):
                with open(p, "rb") as f:
                    out.append(f.read(64 << 10))       # headers and the first segment's start
    except Exception:   # noqa: BLE001 - no built guest: tiny guests are ELF kernels too
        pass
    import tests.guests.build as tb
    from pathlib import Path
    cache = Path(os.path.expanduser("~/.cache/kvmkit/tiny-guests"))
    try:
        with open(tb.build("hello", cache), "rb") as f:
            out.append(f.read())
    except Exception:   # noqa: BLE001
        pass
    return out or [b"\x7fELF"]


@target("kernel-loader", (KvmkitError,), _seeds)
def kernel_loader(data: bytes) -> None:
    """parse_kernel on the input as a file, then load it as the VMM does."""
    path = os.path.join(_DIR, "kernel")
    with open(path, "wb") as f:
        f.write(data)
    k = parse_kernel(path)
    if k.end <= len(memory().regions[0].mapping):
        k.load(memory())
