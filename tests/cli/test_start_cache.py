"""``kvmkit run`` with no arguments and its start cache, as a user runs it
(a real subprocess, the console on its stdin/stdout): the first run boots
and saves the fast guest at its prompt and goes on in the same session;
the second restores it, says so, and its shell answers within a second of
the command starting; ``--fresh`` boots and leaves the cache alone; a
different memory size is a different key, so it boots."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.userspace, pytest.mark.kvm]

PROMPT = b"root@kvmkit:~# "
BOOT_TIMEOUT = 900


class Run:
    """``kvmkit run ARGS`` with its console on pipes."""

    def __init__(self, cache, *args: str) -> None:
        self.started = time.monotonic()
        self.p = subprocess.Popen([sys.executable, "-m", "kvmkit.cli.main", "run", *args],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  env=dict(os.environ, KVMKIT_START_CACHE=str(cache)))
        self.out = bytearray()
        self._cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while chunk := os.read(self.p.stdout.fileno(), 65536):
            with self._cond:
                self.out += chunk
                self._cond.notify_all()

    def expect(self, text: bytes, timeout: float, start: int = 0) -> int:
        deadline = time.monotonic() + timeout
        with self._cond:
            while (i := self.out.find(text, start)) < 0:
                assert self.p.poll() is None, f"kvmkit run ended: {self.p.stderr.read().decode()[-2000:]}"
                assert time.monotonic() < deadline, f"{text!r} not seen: {bytes(self.out[-800:])!r}"
                self._cond.wait(0.2)
            return i + len(text)

    def type(self, line: str) -> None:
        self.p.stdin.write(line.encode() + b"\n")
        self.p.stdin.flush()

    def finish(self) -> tuple[int, str]:
        self.type("poweroff")
        _, err = self.p.communicate(timeout=300)
        return self.p.returncode, err.decode()

    def kill(self) -> str:
        self.p.kill()
        return self.p.communicate(timeout=60)[1].decode()


def test_first_run_saves_the_prompt_later_runs_restore_it(tmp_path):
    cache = tmp_path / "cache"
    first = Run(cache)
    try:
        at = first.expect(PROMPT, BOOT_TIMEOUT)
        booted = time.monotonic() - first.started
        deadline = time.monotonic() + 60
        while not any(cache.glob("*/vmstate")):
            assert time.monotonic() < deadline, "no cache entry written at the prompt"
            time.sleep(0.2)
        first.type("echo same-$((20+1))")          # the same session goes on after the save
        first.expect(b"same-21", 120, at)
        rc, err = first.finish()
    finally:
        if first.p.poll() is None:
            first.kill()
    assert rc == 0 and "saved at its shell prompt to the start cache" in err, err
    (entry,) = [d for d in cache.iterdir() if d.is_dir()]
    saved_at = (entry / "vmstate").stat().st_mtime_ns

    second = Run(cache)
    try:
        at = second.expect(PROMPT, 30)
        second.type("echo restored-$((40+2))")
        second.expect(b"restored-42", 30, at)
        answered = time.monotonic() - second.started
        assert b"Linux version" not in second.out     # no boot
        rc, err = second.finish()
    finally:
        if second.p.poll() is None:
            second.kill()
    assert rc == 0, err
    assert "restored at its shell from the start cache" in err, err
    print(f"restored fast guest answered echo {answered:.2f} s after the command started "
          f"(the boot took {booted:.1f} s to its prompt; load {os.getloadavg()[0]:.1f})")
    # The target (<= 1 s on a quiet host) is measured, not asserted: on two
    # shared CPUs it moves with the load.  A restore must beat a boot by far
    # under any load, since both ran under the same one.
    assert answered < booted / 4, (answered, booted)

    fresh = Run(cache, "--fresh")
    try:
        fresh.expect(b"Linux version", BOOT_TIMEOUT)      # it boots
    finally:
        err = fresh.kill()
    assert "start cache" not in err, err
    assert (entry / "vmstate").stat().st_mtime_ns == saved_at  # --fresh neither used nor wrote it

    bigger = Run(cache, "--memory", "160M")             # a different key: boots, then saves its own entry
    try:
        bigger.expect(b"Linux version", BOOT_TIMEOUT)
        bigger.expect(PROMPT, BOOT_TIMEOUT)
        deadline = time.monotonic() + 60
        while len(list(cache.glob("*/vmstate"))) < 2:
            assert time.monotonic() < deadline, "no second cache entry"
            time.sleep(0.2)
    finally:
        err = bigger.kill()
    assert "restored" not in err
