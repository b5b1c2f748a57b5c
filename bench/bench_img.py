"""kvmkit img vs qemu-img on a 1 GiB partly allocated image, as ratios.

    python bench/bench_img.py [--size 1G] [--reads 20000]

Prints the throughput of ``convert`` qcow2->raw and raw->qcow2 for both tools
and 4 KiB random-read IOPS through the library vs ``qemu-img bench``
(read mode, queue depth 1). Ratios > 1 mean kvmkit is faster. Never fails on
an absolute time: the machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kvmkit.block.image import open_image  # noqa: E402
from kvmkit.block.units import parse_size  # noqa: E402

KVMKIT_IMG = [sys.executable, "-m", "kvmkit.cli.img"]


def build_source(d: Path, size: int) -> tuple[Path, Path]:
    """A sparse raw file ~30% written with incompressible data, and its qcow2 copy."""
    raw = d / "src.raw"
    rng = random.Random(1)
    chunk = 1 << 20
    block = os.urandom(chunk)
    with open(raw, "wb") as f:
        f.truncate(size)
        for off in range(0, size, chunk):
            if rng.random() < 0.3:
                f.seek(off)
                f.write(block[rng.randrange(64):] + block[:0])
    qcow = d / "src.qcow2"
    subprocess.run(["qemu-img", "convert", "-O", "qcow2", str(raw), str(qcow)], check=True)
    return raw, qcow


def timed(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def bench_convert(d: Path, src: Path, src_fmt: str, dst_fmt: str, size: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out_q, out_k = d / f"q.{dst_fmt}", d / f"k.{dst_fmt}"

    def qemu() -> float:
        out_q.unlink(missing_ok=True)
        return timed(["qemu-img", "convert", "-f", src_fmt, "-O", dst_fmt, str(src), str(out_q)])

    def ours() -> float:
        out_k.unlink(missing_ok=True)
        return timed(KVMKIT_IMG + ["convert", "-f", src_fmt, "-O", dst_fmt, str(src),
                                   str(out_k)], env)

    tq = tk = float("inf")
    for _ in range(4):              # interleaved, so page-cache state hits both alike
        tq, tk = min(tq, qemu()), min(tk, ours())
    same = subprocess.run(["qemu-img", "compare", str(out_q), str(out_k)],
                          capture_output=True).returncode == 0
    mib = size / (1 << 20)
    tl = float("inf")
    for _ in range(4):
        tl = min(tl, in_process(src, src_fmt, dst_fmt, out_k))
    print(f"convert {src_fmt}->{dst_fmt}: qemu-img {tq:.3f}s ({mib / tq:.0f} MiB/s), "
          f"kvmkit img {tk:.3f}s ({mib / tk:.0f} MiB/s), ratio {tq / tk:.2f}x"
          f"{'' if same else '  (OUTPUT DIFFERS!)'}")
    print(f"    same copy in-process (no interpreter start-up): {tl:.3f}s, "
          f"ratio {tq / tl:.2f}x")
    out_q.unlink(missing_ok=True)
    out_k.unlink(missing_ok=True)


def in_process(src: Path, src_fmt: str, dst_fmt: str, out: Path) -> float:
    """The library's convert without the ~0.1 s it takes Python to start."""
    from kvmkit.block.convert import copy_image
    from kvmkit.block.create import create_image
    out.unlink(missing_ok=True)
    t = time.perf_counter()
    with open_image(str(src), src_fmt, readonly=True) as s:
        create_image(str(out), dst_fmt, s.size)
        with open_image(str(out), dst_fmt, backing=False, unsafe=True) as d:
            copy_image(s, d)
    return time.perf_counter() - t


def bench_reads(qcow: Path, size: int, count: int) -> None:
    rng = random.Random(2)
    offsets = [rng.randrange(size // 4096) * 4096 for _ in range(count)]
    buf = memoryview(bytearray(4096))
    with open_image(str(qcow), readonly=True) as img:
        for off in offsets[:1000]:               # warm the L2 cache like a running VM
            img.preadv(off, [buf])
        t = time.perf_counter()
        for off in offsets:
            img.preadv(off, [buf])
        ours = count / (time.perf_counter() - t)
    # qemu-img bench has no random mode; a large odd stride spreads reads the same way
    out = subprocess.run(["qemu-img", "bench", "-f", "qcow2", "-c", str(count), "-d", "1",
                          "-s", "4096", "-S", str(1021 * 4096), str(qcow)],
                         capture_output=True, text=True, check=True).stdout
    secs = float(re.search(r"Run completed in ([\d.]+) seconds", out).group(1))
    theirs = count / secs
    print(f"4 KiB random reads: qemu-img bench {theirs:.0f} IOPS, kvmkit library "
          f"{ours:.0f} IOPS, ratio {ours / theirs:.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="1G")
    ap.add_argument("--reads", type=int, default=20000)
    args = ap.parse_args()
    if shutil.which("qemu-img") is None:
        print("qemu-img not found (apt-get install qemu-utils)")
        return 0
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as tmp:
        d = Path(tmp)
        raw, qcow = build_source(d, size)
        print(f"source: {size >> 20} MiB virtual, {raw.stat().st_blocks * 512 >> 20} MiB "
              "allocated")
        bench_convert(d, qcow, "qcow2", "raw", size)
        bench_convert(d, raw, "raw", "qcow2", size)
        bench_reads(qcow, size, args.reads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
