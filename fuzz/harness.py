"""The target registry and the one rule for what counts as a crash."""

from __future__ import annotations

import functools
import random
import traceback
from dataclasses import dataclass, field
from typing import Callable, Iterable


@dataclass(frozen=True)
class Target:
    """``run(data)`` may raise only ``expected``; ``seeds()`` are valid inputs
    the fuzzer starts from (so it reaches deep parsing before mutating)."""

    name: str
    run: Callable[[bytes], None]
    expected: tuple[type[BaseException], ...]
    seeds: Callable[[], list[bytes]]
    doc: str = ""


@dataclass
class Crash:
    target: str
    data: bytes
    error: str
    trace: str = field(repr=False, default="")

    @property
    def signature(self) -> str:
        """Where it failed: exception type plus the innermost kvmkit frame."""
        frames = [ln for ln in self.trace.splitlines() if "kvmkit/" in ln and "File" in ln]
        return f"{self.error.split(':')[0]} @ {frames[-1].strip() if frames else '?'}"


TARGETS: dict[str, Target] = {}


def target(name: str, expected: tuple[type[BaseException], ...], seeds: Callable[[], list[bytes]]):
    """Register ``fn`` as fuzz target ``name``."""
    def deco(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
        cached = functools.lru_cache(maxsize=1)(seeds)       # some seeds cost a build lookup
        TARGETS[name] = Target(name, fn, expected, cached, (fn.__doc__ or "").strip().split("\n")[0])
        return fn
    return deco


def run_one(t: Target, data: bytes) -> Crash | None:
    """Run one input; a Crash if it raised anything but the documented errors."""
    try:
        t.run(data)
    except t.expected:
        return None
    except Exception as exc:   # noqa: BLE001 - classifying is the point
        return Crash(t.name, data, f"{type(exc).__name__}: {exc}", traceback.format_exc())
    return None


def mutate(rng: random.Random, data: bytes, max_len: int = 1 << 16) -> bytes:
    """A libFuzzer-like mutation (bit flips, byte sets, interesting values,
    inserts, erases, splices of itself) for the runs without libFuzzer."""
    b = bytearray(data or b"\0")
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(7)
        i = rng.randrange(len(b)) if b else 0
        if op == 0 and b:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:
            b[i] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif op == 2 and len(b) >= 4:
            j = rng.randrange(len(b) - 3)
            b[j:j + 4] = rng.choice((b"\xff\xff\xff\xff", b"\0\0\0\0", b"\0\0\0\x80", b"\xff\xff\xff\x7f",
                                     rng.randbytes(4)))
        elif op == 3:
            b[i:i] = rng.randbytes(rng.randint(1, 16))
        elif op == 4 and len(b) > 1:
            del b[i:i + rng.randint(1, 16)]
        elif op == 5 and len(b) >= 8:
            j = rng.randrange(len(b) - 7)
            b[j:j + 8] = rng.randrange(1 << 64).to_bytes(8, "little")
        elif op == 6 and b:
            j = rng.randrange(len(b))
            b[i:i] = b[j:j + rng.randint(1, 64)]
    return bytes(b[:max_len])


def bounded_run(t: Target, runs: int, seed: int = 0) -> tuple[int, list[Crash]]:
    """Seeds, then ``runs`` mutations of them: (executions, crashes)."""
    rng = random.Random(seed)
    corpus = list(t.seeds()) or [b""]
    crashes: list[Crash] = []
    n = 0
    for data in corpus:
        n += 1
        if (c := run_one(t, data)) is not None:
            crashes.append(c)
    for _ in range(runs):
        data = mutate(rng, rng.choice(corpus))
        n += 1
        if (c := run_one(t, data)) is not None:
            crashes.append(c)
        elif rng.random() < 0.05 and len(corpus) < 64:
            corpus.append(data)
    return n, crashes


def load_all() -> dict[str, Target]:
    """Import every target module (they register themselves)."""
    from fuzz.targets import cpio, domain, loader, qcow2, qmp, snapshot, virtio   # noqa: F401
    return TARGETS


def names(pattern: str) -> Iterable[str]:
    return [n for n in load_all() if pattern in ("all", n) or n.startswith(pattern + "-")]
