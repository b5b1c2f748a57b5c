"""Scatter lists of guest-memory views: split off a header, read a few
bytes across buffer boundaries, fill from bytes.  Headers are small and
copied; payloads stay views."""

from __future__ import annotations

from typing import Sequence


def total(views: Sequence[memoryview]) -> int:
    return sum(len(v) for v in views)


def split(views: Sequence[memoryview], n: int) -> tuple[list[memoryview], list[memoryview]]:
    """The first ``n`` bytes and the rest, as two view lists (no copying)."""
    head: list[memoryview] = []
    rest: list[memoryview] = []
    for v in views:
        if n <= 0:
            rest.append(v)
        elif len(v) <= n:
            head.append(v)
            n -= len(v)
        else:
            head.append(v[:n])
            rest.append(v[n:])
            n = 0
    return head, rest


def split_tail(views: Sequence[memoryview], n: int) -> tuple[list[memoryview], list[memoryview]]:
    """Everything but the last ``n`` bytes, and those last ``n`` bytes."""
    return split(views, total(views) - n)


def gather(views: Sequence[memoryview], n: int) -> bytes:
    """Copy the first ``n`` bytes (short if the views hold fewer)."""
    head, _ = split(views, n)
    return b"".join(bytes(v) for v in head)


def scatter(views: Sequence[memoryview], data: bytes | memoryview) -> int:
    """Copy ``data`` into the views; returns the bytes written."""
    done = 0
    for v in views:
        if done >= len(data):
            break
        n = min(len(v), len(data) - done)
        v[:n] = data[done:done + n]
        done += n
    return done
