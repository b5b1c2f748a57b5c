"""qcow2 files from a hostile source: the header and its extensions, the
L1/L2 and refcount tables, and the snapshot table.  Each input is applied
to a small valid image (512-byte clusters, data, two internal snapshots, a
backing-free layer), then the image is opened, read end to end, its
snapshots listed and ``check`` run, as ``kvmkit img`` and a VM's disk do."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import struct
import tempfile

from kvmkit.block.qcow2 import check as qcheck
from kvmkit.block.qcow2 import snapshots
from kvmkit.block.qcow2.image import Qcow2Image
from kvmkit.errors import KvmkitError

from fuzz.harness import target

SIZE = 256 << 10
CLUSTER = 512
_DIR = tempfile.mkdtemp(prefix=f"kvmkit-fuzz-{os.getpid()}-", dir=os.environ.get("KVMKIT_FUZZ_SCRATCH") or ("/dev/shm" if os.path.isdir("/dev/shm") else None))
atexit.register(shutil.rmtree, _DIR, True)     # the scratch files go with the process
atexit.register(shutil.rmtree, _DIR, True)


@functools.lru_cache(maxsize=1)
def seed_image() -> bytes:
    path = os.path.join(_DIR, "seed.qcow2")
    Qcow2Image.create(path, SIZE, cluster_size=CLUSTER)
    img = Qcow2Image.open(path)
    try:
        for i, off in enumerate((0, 70 << 10, SIZE - CLUSTER)):
            img.pwritev(off, [memoryview(bytes([0x11 * (i + 1)]) * 3 * CLUSTER)[:SIZE - off]])
        snapshots.create_snapshot(img, "one")
        img.pwritev(4096, [memoryview(b"\x5a" * 4096)])
        snapshots.create_snapshot(img, "two")
        img.flush()
    finally:
        img.close()
    with open(path, "rb") as f:
        return f.read()


def _exercise(image: bytes, write: bool = False) -> None:
    path = os.path.join(_DIR, "case.qcow2")
    with open(path, "wb") as f:
        f.write(image)
    img = Qcow2Image.open(path, readonly=not write)
    try:
        size = min(img.size, SIZE)
        buf = bytearray(16 << 10)
        for off in range(0, size, len(buf)):
            img.preadv(off, [memoryview(buf)[:min(len(buf), size - off)]])
        if img.size > size:
            img.preadv(img.size - CLUSTER, [memoryview(buf)[:CLUSTER]])
        snapshots.list_snapshots(img)
        if write:
            img.pwritev(CLUSTER * 3, [memoryview(b"\xa5" * 2 * CLUSTER)])
            img.flush()
        qcheck.check_image(img)
    finally:
        img.close()


def _patched(data: bytes, lo: int = 0, hi: int | None = None) -> bytes:
    """The seed with patches: each is a u16 position (scaled into lo..hi) and 4 bytes."""
    img = bytearray(seed_image())
    hi = len(img) if hi is None else hi
    span = max(hi - lo - 4, 1)
    for i in range(0, len(data) - 5, 6):
        pos = lo + struct.unpack_from("<H", data, i)[0] * span // 0xFFFF
        img[pos:pos + 4] = data[i + 2:i + 6]
    return bytes(img)


@target("qcow2-header", (KvmkitError,), lambda: [seed_image()[:CLUSTER]])
def qcow2_header(data: bytes) -> None:
    """The first cluster (header and extensions) replaced by the input."""
    seed = seed_image()
    _exercise(data[:CLUSTER].ljust(min(len(data), CLUSTER), b"\0") + seed[min(len(data), CLUSTER):])


@target("qcow2-tables", (KvmkitError,), lambda: [b"", bytes(6)])
def qcow2_tables(data: bytes) -> None:
    """Patches anywhere after the header: L1, L2, refcount table and blocks."""
    _exercise(_patched(data, CLUSTER), write=bool(data and data[0] & 1))


def _snapshot_span() -> tuple[int, int]:
    seed = seed_image()
    nb, off = struct.unpack_from(">IQ", seed, 60)
    return off, off + 4 * CLUSTER


@target("qcow2-snapshots", (KvmkitError,), lambda: [b"", bytes(6)])
def qcow2_snapshots(data: bytes) -> None:
    """Patches in the snapshot table (ids, names, L1 pointers, extra data)."""
    lo, hi = _snapshot_span()
    img = bytearray(_patched(data[4:], lo, min(hi, len(seed_image()))))
    if len(data) >= 4 and data[0] & 0x80:              # sometimes the header's count too
        struct.pack_into(">I", img, 60, struct.unpack_from("<I", data, 0)[0] & 0xFFFF)
    _exercise(bytes(img))
