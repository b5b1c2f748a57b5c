"""Every fuzz target, a bounded number of inputs each (seconds in all):
its seeds, then deterministic libFuzzer-style mutations of them, without
libFuzzer (``python -m fuzz`` runs them coverage-guided, for longer).
A crash is any exception the target does not document, as in the runner."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.harness import bounded_run, load_all

ROOT = Path(__file__).resolve().parents[2]
TARGETS = load_all()
RUNS = {"kernel-loader": 60, "vm-snapshot": 120, "qcow2-tables": 200, "qcow2-snapshots": 200}


def test_every_parser_of_untrusted_input_has_a_target():
    assert set(TARGETS) == {
        "qcow2-header", "qcow2-tables", "qcow2-snapshots", "qmp-framer", "qmp-arguments",
        "virtqueue", "virtio-blk", "virtio-net", "virtio-console", "virtio-vsock", "virtio-balloon",
        "kernel-loader", "cpio", "vm-snapshot", "domain-xml"}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_target_survives_bounded_mutations(name, caplog):
    caplog.set_level(logging.CRITICAL)
    t = TARGETS[name]
    assert t.seeds(), "a target starts from valid inputs"
    executions, crashes = bounded_run(t, RUNS.get(name, 300), seed=12)
    assert executions > RUNS.get(name, 300)
    assert not crashes, "\n\n".join(f"{c.signature}\ninput {c.data[:200]!r}\n{c.trace}" for c in crashes[:3])


def test_runner_reports_executions_coverage_and_crashes(tmp_path):
    p = subprocess.run([sys.executable, "-m", "fuzz", "qmp-framer", "--runs", "200", "--workdir", str(tmp_path)],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    head, row = p.stdout.splitlines()[:2]
    assert head.split()[:5] == ["target", "executions", "cov", "ft", "crashes"]
    name, execs, cov, ft, crashes = row.split()
    assert name == "qmp-framer" and int(execs) == 200 and int(cov) > 50 and crashes == "0"


def test_runner_refuses_an_unknown_target():
    p = subprocess.run([sys.executable, "-m", "fuzz", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "no target 'nope'" in p.stderr and "Traceback" not in p.stderr


# -- hypothesis: where the property is more than "does not crash" ------------

def _ring_memory():
    from kvmkit.memory.guest_memory import GuestMemory
    return GuestMemory.anonymous([(0, 1 << 20)])


_MEM = _ring_memory()


@settings(max_examples=150, deadline=None)
@given(bufs=st.lists(st.tuples(st.integers(0, 4096), st.booleans()), min_size=1, max_size=12),
       indirect=st.booleans(), event_idx=st.booleans(), qsize_log=st.integers(4, 8))
def test_well_formed_chains_come_back_exactly(bufs, indirect, event_idx, qsize_log):
    """A driver's valid chain (readable buffers then writable ones, direct or
    indirect, with or without EVENT_IDX) pops as exactly those buffers."""
    from kvmkit.devices.virtio.constants import F_EVENT_IDX, F_INDIRECT_DESC
    from kvmkit.devices.virtio.queue import Virtqueue
    from tests.devices.helpers import Ring
    bufs = sorted(bufs, key=lambda b: b[1])                   # readable first
    n = 1 << qsize_log
    if not indirect and len(bufs) > n:
        bufs = bufs[:n]
    _MEM.view(0, 0x20000)[:] = bytes(0x20000)
    ring = Ring(_MEM, 0x1000, n, event_idx=event_idx)
    layout, addr = [], 0x40000
    for length, writable in bufs:
        layout.append((addr, length, writable))
        addr += length + 64
    head = ring.add_indirect(0x20000, layout) if indirect else ring.add(layout)
    q = Virtqueue(_MEM, 0, 256)
    q.size, q.desc_addr, q.avail_addr, q.used_addr = n, ring.desc, ring.avail, ring.used
    q.activate((1 << F_EVENT_IDX if event_idx else 0) | (1 << F_INDIRECT_DESC))
    chain = q.pop()
    assert chain.head == head and q.pop() is None
    want_r = [ln for (_, ln, w) in layout if not w and ln]
    want_w = [ln for (_, ln, w) in layout if w and ln]
    assert [len(v) for v in chain.readable] == want_r and [len(v) for v in chain.writable] == want_w
