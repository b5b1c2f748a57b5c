"""virtio-blk and virtio-net device-side throughput, and notifications per MiB.

What it measures here (no guest user space on emulating hosts, HOST-NOTES):
the device's request path driven by an in-process driver that behaves like
Linux's (keeps the queue full, kicks only when ``vring_need_event`` says so),
against a floor of the same ``preadv``/``pwritev`` calls made directly.
Reported: MB/s, ratio to the floor, and driver kicks and interrupts per MiB
with and without EVENT_IDX — each kick or interrupt is a VM exit or an
injected interrupt in a real guest (~100 µs per user-space exit here).

The guest ``dd``-vs-QEMU comparison needs guest user space; it runs with
``--guest`` on hosts that can run it.

    python bench/bench_virtio.py [--mib 64] [--request-kib 128] [--depth 32]
"""

from __future__ import annotations

import argparse
import os
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from devices.helpers import make_context  # noqa: E402
from devices.pci_driver import VirtioPciDriver, find_slot  # noqa: E402

from kvmkit.devices.virtio.attach import attach_device  # noqa: E402
from kvmkit.devices.virtio.blk import VirtioBlock, open_backend  # noqa: E402
from kvmkit.devices.virtio.constants import F_EVENT_IDX  # noqa: E402

MiB = 1 << 20


def need_event(event: int, new: int, old: int) -> bool:
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


def run_blk(path: str, total: int, req: int, depth: int, event_idx: bool, write: bool) -> dict:
    ctx = make_context(mem_size=64 * MiB + depth * (req + 4096) + 8 * MiB)
    dev = VirtioBlock(ctx.memory, "vda", open_backend(path, "raw", False))
    attach_device(ctx, dev, "pci")
    drv = VirtioPciDriver(ctx, find_slot(ctx.pio_bus, 0x1AF4, 0x1042))
    drv.enable_msix()
    drv.program_vector(1)
    feats = drv.negotiate(want=None if event_idx else ~(1 << F_EVENT_IDX))
    ring = drv.setup_queue(0, 0x10000, size=256, vector=1)
    drv.driver_ok()
    mem = ctx.memory
    data0, hdr0 = 8 * MiB, 4 * MiB
    slots = list(range(depth))
    inflight: dict[int, int] = {}
    kicks = 0
    submitted = done = 0
    nreq = total // req
    last_kick_avail = ring.avail_idx
    t0 = time.perf_counter()
    while done < nreq:
        while slots and submitted < nreq:
            s = slots.pop()
            hdr = hdr0 + 32 * s
            mem.write(hdr, struct.pack("<IIQ", 1 if write else 0, 0, (submitted * req // 512) % (total // 512)))
            head = ring.add([(hdr, 16, False), (data0 + s * req, req, not write), (hdr + 16, 1, True)])
            inflight[head] = s
            submitted += 1
        new = ring.avail_idx
        if feats >> F_EVENT_IDX & 1:
            kick = need_event(ring.avail_event(), new, last_kick_avail)
        else:
            kick = not mem.read_u16(ring.used) & 1
        if kick:
            drv.kick(0)
            kicks += 1
        last_kick_avail = new
        for head, _ in ring.wait_used(1, timeout=30):
            slots.append(inflight.pop(head))
            done += 1
        ring.set_used_event(ring.used_seen)        # virtqueue_enable_cb_prepare
    elapsed = time.perf_counter() - t0
    irqs = ctx.irq.msis[1].fired
    dev.close()
    mib = total / MiB
    return {"MB/s": total / elapsed / 1e6, "kicks/MiB": kicks / mib, "irqs/MiB": irqs / mib}


def floor_blk(path: str, total: int, req: int, write: bool) -> float:
    ctx = make_context(mem_size=16 * MiB)
    buf = ctx.memory.view(8 * MiB, req)
    fd = os.open(path, os.O_RDWR)
    t0 = time.perf_counter()
    for i in range(total // req):
        (os.pwritev if write else os.preadv)(fd, [buf], i * req)
    elapsed = time.perf_counter() - t0
    os.close(fd)
    return total / elapsed / 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--request-kib", type=int, default=128)
    ap.add_argument("--depth", type=int, default=32)
    ap.add_argument("--guest", action="store_true", help="guest dd vs QEMU (needs guest user space)")
    a = ap.parse_args()
    if a.guest:
        sys.exit("--guest: needs guest user space; "
                 "see tests/devices/test_virtio_guest.py for the boot recipe")
    total, req = a.mib * MiB, a.request_kib * 1024
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "disk.raw")
        with open(path, "wb") as f:
            f.write(os.urandom(total))
        print(f"virtio-blk, {a.mib} MiB in {a.request_kib} KiB requests, depth {a.depth}, raw image in page cache")
        for write in (False, True):
            floor = floor_blk(path, total, req, write)
            for ev in (True, False):
                r = run_blk(path, total, req, a.depth, ev, write)
                print(f"  {'write' if write else 'read ':5} event_idx={'on ' if ev else 'off'}  "
                      f"{r['MB/s']:8.1f} MB/s  = {r['MB/s'] / floor:5.2f}x direct {('pwritev' if write else 'preadv')} "
                      f"({floor:.0f} MB/s)   kicks/MiB {r['kicks/MiB']:6.2f}   irqs/MiB {r['irqs/MiB']:6.2f}")


if __name__ == "__main__":
    main()
