"""Shared by the migration tests: the memwriter guest's layout, a
destination receiving on its own thread, memory comparisons."""

from __future__ import annotations

import threading
import time

import pytest

from kvmkit.vmm.migration.incoming import receive
from kvmkit.vmm.migration.transport import Incoming, parse_uri

COUNTER, CHECKSUM, BASE, PAGES = 0x5000, 0x5008, 0x1000000, 1024


def count(m) -> int:
    return m.memory.read_u64(COUNTER)


def wait_past(m, value: int, timeout: float = 20) -> int:
    deadline = time.monotonic() + timeout
    while count(m) <= value:
        assert m.exit_reason is None, f"the guest stopped: {m.exit_reason} {m.exit_status}"
        assert time.monotonic() < deadline, f"counter stuck at {count(m)}"
        time.sleep(0.01)
    return count(m)


class Destination:
    """``receive`` on its own thread (as a destination process would)."""

    def __init__(self, uri: str) -> None:
        self.incoming = Incoming(parse_uri(uri))
        self.arrival = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.arrival = receive(self.incoming)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc

    def join(self):
        self.thread.join(30)
        assert not self.thread.is_alive()
        return self.arrival


def ram(m) -> list[bytes]:
    return [bytes(r.mapping) for r in m.memory.regions]


def assert_same_memory(src, dst) -> None:
    for a, b in zip(ram(src), ram(dst)):
        if a != b:
            bad = [hex(i) for i in range(0, len(a), 4096) if a[i:i + 4096] != b[i:i + 4096]]
            pytest.fail(f"{len(bad)} pages differ: {bad[:8]}")


def assert_pattern(m) -> int:
    """The written region as the guest defines it: generation g on a prefix,
    g-1 (or g) after it, page numbers at +8.  Returns g."""
    g = max(m.memory.read_u64(BASE + i * 4096) for i in range(PAGES))
    seen = [m.memory.read_u64(BASE + i * 4096) for i in range(PAGES)]
    k = sum(1 for v in seen if v == g)
    assert seen == [g] * k + [g - 1] * (PAGES - k), "the region is not a state the guest could have written"
    assert all(m.memory.read_u64(BASE + i * 4096 + 8) == i for i in range(PAGES))
    return g


