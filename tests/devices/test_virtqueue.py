"""Split-virtqueue parsing against hand-built rings, including hostile ones."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kvmkit.devices.virtio.constants import (
    DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, bit)
from kvmkit.devices.virtio.queue import ChainError, Virtqueue
from kvmkit.memory.guest_memory import GuestMemory

from .helpers import Ring

MEM = 1 << 20
FEATURES = bit(F_VERSION_1) | bit(F_INDIRECT_DESC)


@pytest.fixture(scope="module")
def mem():
    return GuestMemory.anonymous([(0, MEM)])


def make(mem, size=8, features=FEATURES):
    ring = Ring(mem, 0x1000, size)
    q = Virtqueue(mem, 0, max_size=size)
    q.size, q.desc_addr, q.avail_addr, q.used_addr = size, ring.desc, ring.avail, ring.used
    q.ready = True
    q.activate(features)
    return ring, q


def test_direct_chain_readable_then_writable(mem):
    ring, q = make(mem)
    mem.write(0x10000, b"hello")
    head = ring.add([(0x10000, 5, False), (0x20000, 100, True), (0x30000, 1, True)])
    c = q.pop()
    assert c.head == head
    assert [bytes(v) for v in c.readable] == [b"hello"]
    assert [len(v) for v in c.writable] == [100, 1]
    c.writable[0][:3] = b"abc"
    assert mem.read(0x20000, 3) == b"abc"          # zero-copy views into guest RAM
    assert q.pop() is None
    q.push(c.head, 101)
    assert ring.take_used() == [(head, 101)]


def test_indirect_chain(mem):
    ring, q = make(mem)
    head = ring.add_indirect(0x40000, [(0x10000, 16, False), (0x20000, 512, True)])
    c = q.pop()
    assert c.head == head and c.readable_len == 16 and c.writable_len == 512


def test_indirect_refused_unless_negotiated(mem):
    ring, q = make(mem, features=bit(F_VERSION_1))
    ring.add_indirect(0x40000, [(0x10000, 16, False)])
    with pytest.raises(ChainError):
        q.pop()


def _loop(ring, mem):
    ring.write_desc(0, 0x10000, 8, DESC_F_NEXT, 1)
    ring.write_desc(1, 0x10000, 8, DESC_F_NEXT, 0)


def _nested_indirect(ring, mem):
    mem.write(0x40000, struct.pack("<QIHH", 0x50000, 16, DESC_F_INDIRECT, 0))
    ring.write_desc(0, 0x40000, 16, DESC_F_INDIRECT, 0)


@pytest.mark.parametrize("build, message", [
    (_loop, "loops"),
    (lambda ring, mem: ring.write_desc(0, 0x10000, 8, DESC_F_NEXT, 200), ">= table size"),
    (lambda ring, mem: ring.write_desc(0, MEM - 4, 8, 0, 0), "outside guest RAM"),
    (lambda ring, mem: (ring.write_desc(0, 0x20000, 8, DESC_F_WRITE | DESC_F_NEXT, 1),
                        ring.write_desc(1, 0x10000, 8, 0, 0)), "readable buffer after a writable"),
    (_nested_indirect, "indirect descriptor not allowed"),
    (lambda ring, mem: ring.write_desc(0, 0x40000, 24, DESC_F_INDIRECT, 0), "indirect table of 24"),
], ids=["loop", "next-out-of-table", "outside-ram", "wrong-direction", "nested-indirect", "odd-indirect"])
def test_malformed_chain(mem, build, message):
    ring, q = make(mem)
    build(ring, mem)
    ring.publish(0)
    with pytest.raises(ChainError, match=message):
        q.pop()


def test_avail_index_runs_ahead(mem):
    ring, q = make(mem)
    mem.write_u16(ring.avail + 2, 100)
    with pytest.raises(ChainError):
        q.pop()


def test_ring_outside_ram_refused(mem):
    q = Virtqueue(mem, 0, max_size=8)
    q.size, q.desc_addr, q.avail_addr, q.used_addr = 8, MEM - 16, 0x2000, 0x3000
    with pytest.raises(ChainError):
        q.activate(FEATURES)


def test_event_idx_suppresses_interrupts(mem):
    ring, q = make(mem, features=FEATURES | bit(F_EVENT_IDX))
    for _ in range(3):
        ring.add([(0x20000, 8, True)])
    ring.set_used_event(2)            # driver wants an interrupt once used idx passes 2
    for _ in range(2):
        q.push(q.pop().head, 8)
    assert not q.needs_interrupt()    # used idx 2: event 2 not yet crossed
    q.push(q.pop().head, 8)
    assert q.needs_interrupt()        # used idx 3 crossed 2
    assert not q.enable_notify()
    assert ring.avail_event() == 3


def test_no_interrupt_flag(mem):
    ring, q = make(mem)
    ring.add([(0x20000, 8, True)])
    mem.write_u16(ring.avail, 1)      # VRING_AVAIL_F_NO_INTERRUPT
    q.push(q.pop().head, 8)
    assert not q.needs_interrupt()


_desc = st.tuples(st.integers(0, MEM + 0x1000), st.integers(0, 0x20000),
                  st.integers(0, 0xFFFF), st.integers(0, 40))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.lists(_desc, min_size=16, max_size=16), heads=st.lists(st.integers(0, 40), min_size=1, max_size=20),
       indirect=st.lists(_desc, min_size=0, max_size=8), avail_idx=st.integers(0, 0xFFFF))
def test_arbitrary_rings_never_escape(mem, table, heads, indirect, avail_idx):
    """Whatever the guest writes, pop() terminates and only yields views inside RAM."""
    size = 16
    ring, q = make(mem, size, FEATURES | bit(F_EVENT_IDX))
    for i, (addr, length, flags, nxt) in enumerate(table):
        if flags & DESC_F_INDIRECT and indirect:
            addr, length = 0x40000, 16 * len(indirect)
        ring.write_desc(i, addr, length, flags & 7, nxt)
    for k, (addr, length, flags, nxt) in enumerate(indirect):
        mem.write(0x40000 + 16 * k, struct.pack("<QIHH", addr, length, flags & 7, nxt))
    for h in heads:
        ring.publish(h)
    if avail_idx % 3 == 0:
        mem.write_u16(ring.avail + 2, avail_idx)
    for _ in range(size + 2):
        try:
            c = q.pop()
        except ChainError:
            break
        if c is None:
            break
        for v in c.readable + c.writable:
            assert len(v) <= 0x20000
        assert len(c.readable) + len(c.writable) <= size + 8
        assert c.readable_len + c.writable_len <= (size + 8) * 0x20000


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chains=st.lists(st.lists(st.tuples(st.integers(1, 4096), st.booleans()), min_size=1, max_size=4),
                       min_size=1, max_size=30))
def test_well_formed_chains_roundtrip(mem, chains):
    """Valid chains come back exactly as published, across index wrap-around."""
    ring, q = make(mem, 8)
    ring.avail_idx = q.last_avail = q.used_idx = 0xFFF0
    ring.used_seen = 0xFFF0
    for bufs in chains:
        bufs = sorted(bufs, key=lambda b: b[1])          # readable before writable
        spec = [(0x10000 + 0x1000 * i, n, w) for i, (n, w) in enumerate(bufs)]
        head = ring.add(spec)
        c = q.pop()
        assert c.head == head
        assert c.readable_len == sum(n for _, n, w in spec if not w)
        assert c.writable_len == sum(n for _, n, w in spec if w)
        q.push(c.head, c.writable_len)
        assert ring.take_used() == [(head, c.writable_len)]
