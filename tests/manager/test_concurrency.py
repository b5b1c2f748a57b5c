"""Many managers at once: 20 tiny-guest domains defined, started and
destroyed from 20 threads while others list, then listed: nothing lost,
nothing twice, no lock left held, a consistent state directory."""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from kvmkit.manager.errors import OperationFailed
from kvmkit.manager.locks import try_lock

from .helpers import tiny_xml

pytestmark = pytest.mark.kvm

COUNT = 20


def test_twenty_domains_defined_started_destroyed_concurrently(host, idle, virsh):
    names = [f"dom{i:02d}" for i in range(COUNT)]
    seen_running: dict[str, int] = {}
    stop_listing = threading.Event()
    list_errors: list[Exception] = []

    def life(name: str) -> None:
        time.sleep(random.random() * 0.2)
        host.define(tiny_xml(name, idle))
        info = host.start(name)
        assert info.state == "running" and info.id is not None
        seen_running[name] = info.id
        time.sleep(random.random() * 0.5)
        host.destroy(name)

    def lister() -> None:
        while not stop_listing.is_set():
            try:
                infos = host.domains()
                listed = [i.name for i in infos]
                assert len(listed) == len(set(listed)), listed
            except Exception as e:           # noqa: BLE001 - reported below
                list_errors.append(e)
            time.sleep(0.05)

    listers = [threading.Thread(target=lister) for _ in range(2)]
    for t in listers:
        t.start()
    try:
        with ThreadPoolExecutor(COUNT) as pool:
            for f in [pool.submit(life, n) for n in names]:
                f.result()
    finally:
        stop_listing.set()
        for t in listers:
            t.join()
    assert not list_errors, list_errors[:3]
    assert sorted(seen_running) == names
    assert len(set(seen_running.values())) == COUNT                 # every start got its own id
    out = virsh("-q", "list", "--all").stdout.splitlines()
    assert sorted(line.split()[1] for line in out[2:] if line.strip()) == names   # the CLI sees the same
    assert all(line.split()[0] == "-" and line.endswith("shut off") for line in out[2:] if line.strip())
    assert {host.lookup(n).reason for n in names} == {"destroyed"}
    for n in names:                                                   # no stale lock
        fd = try_lock(host.sd.domain_lock(n), wait=0)
        assert fd is not None, n
    fd = try_lock(host.sd.host_lock, wait=0)
    assert fd is not None
    report = host.check()
    assert report.problems == [] and report.recovered == []


def test_one_name_defined_by_ten_threads_at_once_wins_once(host, idle):
    results: list[str] = []

    def define(i: int) -> None:
        try:
            host.define(tiny_xml("same", idle))         # a different UUID each time
            results.append("ok")
        except OperationFailed as e:
            assert "already exists with uuid" in str(e)
            results.append("refused")

    with ThreadPoolExecutor(10) as pool:
        list(pool.map(define, range(10)))
    assert sorted(results) == ["ok"] + ["refused"] * 9
    assert [i.name for i in host.domains()] == ["same"]


def test_concurrent_starts_of_one_domain_start_one_vmm(host, idle):
    host.define(tiny_xml("once", idle))
    outcomes: list[str] = []

    def start(_: int) -> None:
        try:
            host.start("once")
            outcomes.append("started")
        except Exception as e:                           # noqa: BLE001
            outcomes.append(str(e))

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(start, range(6)))
    assert outcomes.count("started") == 1
    assert all("already running" in o for o in outcomes if o != "started")
    assert host.lookup("once").state == "running"
