"""Restore: time to running for 512 MiB and 2 GiB guests, kvmkit against QEMU.

For each size a guest is made whose RAM is all non-zero (a worst case for a
state file: nothing sparse, nothing QEMU can skip as a zero page), saved,
and brought back four ways:

- kvmkit in-process: ``kvmkit.VM.restore(DIR)`` + ``start()`` until the
  vCPU threads run (median of 5), then the lazy part: the first touch of
  every page of RAM (the host reading it through the ``MAP_PRIVATE``
  mapping, page faults served from the page cache);
- kvmkit as a command: ``kvmkit run --restore DIR --qmp unix:S``, from the
  spawn until QMP ``query-status`` says ``running`` (median of 3);
- QEMU: ``qemu-system-x86_64 -incoming "exec:cat STATE"`` of a state file
  that QEMU itself wrote with QMP ``migrate "exec:cat > STATE"``, from the
  spawn until ``query-status`` leaves ``inmigrate`` and, after ``cont``
  (the source was paused), says ``running`` (median of 3).  QEMU cannot run Linux kernel code on this host, so its
  guest is the one it can hold: ``-M pc -accel kvm -S`` with RAM from a
  ``memory-backend-file`` (``share=off``) filled with the same non-zero
  pattern, never started before the save; after the restore it runs
  SeaBIOS's first instructions.
- save: kvmkit ``save_snapshot`` and QEMU ``migrate`` to a file, MB/s.
- diff snapshot after 1 s of an idle guest: the fast Linux guest at its
  shell prompt (booted once) and the ``idle`` tiny guest each take a full
  snapshot, idle 1 s, and take a diff on it: pages written, bytes on disk
  (the whole diff directory, state file included) against the full
  snapshot's RAM, and the time the diff took (``--no-diff`` skips it).

The kvmkit guest is the ``idle`` tiny guest (halts), its RAM filled from
the host before the save.  Ratios are QEMU's time over kvmkit's.

    python bench/bench_restore.py [--sizes 512,2048] [--no-diff]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "guests"))
MIB = 1 << 20
FILL_FROM = 16 * MIB          # below: the guest's code, page tables and zero page


def pattern(size: int) -> bytes:
    """Non-zero, not page-repetitive (each page starts with its index)."""
    page = bytes(range(1, 256)) * 17
    return b"".join(i.to_bytes(8, "little") + page[:4088] for i in range(size // 4096))


def qmp(path: str, *commands: str, timeout: float = 60) -> list[dict]:
    """Connect (retrying until the socket exists), negotiate, run ``commands``."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            break
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.002)
    f = s.makefile("rwb")
    f.readline()
    out = []
    for cmd in ("qmp_capabilities",) + commands:
        f.write(json.dumps({"execute": cmd}).encode() + b"\n")
        f.flush()
        while True:
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                out.append(msg)
                break
    s.close()
    return out[1:]


def wait_running(path: str, proc: subprocess.Popen, timeout: float = 120, cont: bool = False) -> None:
    """Poll until running; with ``cont``, continue a VM that came in stopped
    (QEMU keeps the source's run state, here prelaunch, after -incoming)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}: {proc.stderr.read().decode()[-500:]}")
        try:
            (st,) = qmp(path, "query-status", timeout=timeout)
            status = st.get("return", {}).get("status")
            if status == "running":
                return
            if cont and status in ("paused", "prelaunch"):
                qmp(path, "cont")
        except OSError:
            pass
        time.sleep(0.002)
    raise RuntimeError("not running in time")


def stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.communicate()


# ------------------------------------------------------------------ diffs
def disk_bytes(directory: Path) -> int:
    """Bytes the directory's files take on disk (sparse holes not counted)."""
    return sum(p.stat().st_blocks * 512 for p in directory.rglob("*") if p.is_file())


def idle_diff(m, tmp: Path) -> dict:
    """Full snapshot, 1 s idle, diff on it: what the diff holds and costs."""
    full = m.save_snapshot(tmp / "full")
    time.sleep(1.0)
    diff = m.save_snapshot(tmp / "diff", diff_from=tmp / "full")
    return {"RAM MiB": full.memory_bytes / MIB, "full written KiB": full.written_bytes / 1024,
            "diff pages": diff.written_bytes // 4096, "diff on disk KiB": disk_bytes(tmp / "diff") / 1024,
            "diff ms": diff.seconds * 1e3}


def diff_rows(tmp: Path) -> list[tuple[str, dict]]:
    import build as guest_build

    import kvmkit
    from kvmkit.guest.assets import fast_guest
    rows = []
    g = fast_guest(build=True)
    m = kvmkit.VM(g.vmlinux, initrd=g.initrd, cmdline=g.cmdline, memory=g.memory)
    try:
        m.start()
        m.console.expect(rb"root@kvmkit:~# ", timeout=900, alive=lambda: m.running)
        time.sleep(2.0)                              # past the prompt's own last writes
        (tmp / "linux").mkdir()
        rows.append(("fast Linux guest at its shell", idle_diff(m, tmp / "linux")))
    finally:
        m.close()
    kernel = guest_build.build("idle", Path.home() / ".cache" / "kvmkit" / "test-guests")
    m = kvmkit.VM(kernel, memory=64 * MIB, serial="null")
    try:
        m.start()
        time.sleep(0.5)
        (tmp / "tiny").mkdir()
        rows.append(("idle tiny guest (64 MiB)", idle_diff(m, tmp / "tiny")))
    finally:
        m.close()
    return rows


# ------------------------------------------------------------------ kvmkit
def kvmkit_snapshot(size: int, d: Path) -> tuple[Path, float]:
    import build as guest_build

    import kvmkit
    kernel = guest_build.build("idle", Path.home() / ".cache" / "kvmkit" / "test-guests")
    m = kvmkit.VM(kernel, memory=size, start_paused=True)
    try:
        m.start()
        m.memory.write(FILL_FROM, pattern(size - FILL_FROM))
        t0 = time.monotonic()
        m.save_snapshot(d / "snap")
        return d / "snap", time.monotonic() - t0
    finally:
        m.close()


def drop_page_cache_of(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def kvmkit_in_process(snap: Path, size: int) -> tuple[float, float]:
    import kvmkit
    times = []
    touch = 0.0
    for i in range(5):
        t0 = time.perf_counter()
        m = kvmkit.VM.restore(snap, serial="null")
        m.start()
        times.append(time.perf_counter() - t0)
        try:
            if i == 4:
                t1 = time.perf_counter()
                view = m.memory.view(FILL_FROM, size - FILL_FROM)
                for off in range(0, len(view), 4096):
                    view[off]                     # one read per page: the fault, not the copy
                touch = time.perf_counter() - t1
        finally:
            m.close()
    return statistics.median(times), touch


def kvmkit_command(snap: Path, tmp: Path) -> float:
    times = []
    for i in range(3):
        sock = tmp / f"k{i}.qmp"
        times.append(time_to_running([sys.executable, "-m", "kvmkit.cli.main", "run", "--restore", str(snap),
                                      "--serial", "null", "--qmp", f"unix:{sock}"], sock))
    return statistics.median(times)


def time_to_running(argv: list[str], sock: Path, cont: bool = False) -> float:
    """Seconds from spawning ``argv`` until its QMP socket says ``running``."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        wait_running(str(sock), p, cont=cont)
        return time.perf_counter() - t0
    finally:
        stop(p)


# ------------------------------------------------------------------ QEMU
def qemu_base(size: int, ram: Path, sock: Path) -> list[str]:
    return ["qemu-system-x86_64", "-M", "pc", "-accel", "kvm", "-cpu", "qemu64", "-display", "none",
            "-nodefaults", "-m", f"{size // MIB}M",
            "-object", f"memory-backend-file,id=ram0,size={size // MIB}M,mem-path={ram},share=off",
            "-machine", "memory-backend=ram0", "-qmp", f"unix:{sock},server=on,wait=off"]


def qemu_save(size: int, tmp: Path) -> tuple[Path, float]:
    ram = tmp / "qemu-ram"
    with open(ram, "wb") as f:
        f.write(bytes(FILL_FROM))
        f.write(pattern(size - FILL_FROM))
    sock, state = tmp / "qs.qmp", tmp / "qemu.state"
    p = subprocess.Popen(qemu_base(size, ram, sock) + ["-S"], stderr=subprocess.PIPE)
    try:
        qmp(str(sock))
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(sock))
        f = s.makefile("rwb")
        f.readline()
        for cmd in ({"execute": "qmp_capabilities"},
                    {"execute": "migrate", "arguments": {"uri": f"exec:cat > {state}"}}):
            t0 = time.perf_counter()
            f.write(json.dumps(cmd).encode() + b"\n")
            f.flush()
            while "return" not in json.loads(f.readline()):
                pass
        while True:
            f.write(b'{"execute": "query-migrate"}\n')
            f.flush()
            msg = json.loads(f.readline())
            while "return" not in msg:
                msg = json.loads(f.readline())
            if msg["return"].get("status") in ("completed", "failed"):
                assert msg["return"]["status"] == "completed", msg
                break
            time.sleep(0.005)
        secs = time.perf_counter() - t0
        s.close()
    finally:
        stop(p)
    return state, secs


def qemu_incoming(size: int, state: Path, tmp: Path) -> float:
    ram = tmp / "qemu-ram"
    times = []
    for i in range(3):
        sock = tmp / f"qi{i}.qmp"
        times.append(time_to_running(qemu_base(size, ram, sock) + ["-incoming", f"exec:cat {state}"], sock,
                                     cont=True))
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="512,2048", help="guest RAM sizes in MiB")
    ap.add_argument("--no-diff", action="store_true", help="skip the diff-snapshot-after-1-s-idle section")
    args = ap.parse_args()
    if not args.no_diff:
        with tempfile.TemporaryDirectory(prefix="kvmkit-bench-diff-", dir="/var/tmp") as t:
            for title, row in diff_rows(Path(t)):
                print(f"diff snapshot after 1 s idle, {title}:")
                for k, v in row.items():
                    print(f"  {k:28s} {v:10.1f}")
                print(f"  diff on disk / full RAM             {row['diff on disk KiB'] / 1024 / row['RAM MiB']:8.4f}x")
                print(f"  diff on disk / full written         {row['diff on disk KiB'] / row['full written KiB']:8.4f}x")
                sys.stdout.flush()
    have_qemu = shutil.which("qemu-system-x86_64") is not None
    rows = []
    for mib in (int(x) for x in args.sizes.split(",")):
        size = mib * MIB
        with tempfile.TemporaryDirectory(prefix="kvmkit-bench-restore-", dir="/var/tmp") as t:
            tmp = Path(t)
            snap, save_s = kvmkit_snapshot(size, tmp)
            inproc, touch = kvmkit_in_process(snap, size)
            cmd = kvmkit_command(snap, tmp)
            row = {"mib": mib, "kvmkit save MB/s": size / MIB / save_s, "kvmkit in-process ms": inproc * 1e3,
                   "first touch of all RAM ms": touch * 1e3, "kvmkit command ms": cmd * 1e3}
            if have_qemu:
                state, qsave = qemu_save(size, tmp)
                row["qemu save MB/s"] = size / MIB / qsave
                row["qemu -incoming ms"] = qemu_incoming(size, state, tmp) * 1e3
            rows.append(row)
        print(f"{mib} MiB guest (all RAM non-zero):")
        for k, v in row.items():
            if k != "mib":
                print(f"  {k:28s} {v:10.1f}")
        if have_qemu:
            print(f"  QEMU -incoming / kvmkit in-process  {row['qemu -incoming ms'] / row['kvmkit in-process ms']:8.1f}x")
            print(f"  QEMU -incoming / kvmkit command     {row['qemu -incoming ms'] / row['kvmkit command ms']:8.1f}x")
            print(f"  kvmkit save / QEMU save (MB/s)      {row['kvmkit save MB/s'] / row['qemu save MB/s']:8.2f}x")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
