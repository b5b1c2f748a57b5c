"""Shared fixtures: real /dev/kvm, real tiny guests built with gcc, real
Linux guests built by ``kvmkit guest build``."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "guests"))
import build as guest_build  # noqa: E402

GUEST_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kvmkit" / "test-guests"


def kvm_usable() -> tuple[bool, str]:
    if not os.path.exists("/dev/kvm"):
        return False, "/dev/kvm does not exist"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False, "/dev/kvm is not accessible to this user"
    return True, ""


def pytest_collection_modifyitems(config, items):
    ok, why = kvm_usable()
    if ok:
        return
    skip = pytest.mark.skip(reason=why)
    for item in items:
        if "kvm" in item.keywords or "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_guest():
    """``tiny_guest("hello")`` -> Path of the built ELF (hello, counter, smp, ring3)."""
    def get(name: str) -> Path:
        return guest_build.build(name, GUEST_CACHE)
    return get


@pytest.fixture
def machine():
    """``machine(kernel, **VmConfig kwargs)`` -> a started Machine, closed after the test."""
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine
    made = []

    def make(kernel, start: bool = True, **kw):
        kw.setdefault("memory", "64M")
        m = Machine(VmConfig.build(kernel, **kw))
        made.append(m)
        return m.start() if start else m
    yield make
    for m in made:
        m.close()
