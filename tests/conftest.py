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


class ShellSnapshot:
    """The fast guest booted once per test session and saved at its shell
    prompt; ``restore()`` gives a new machine at that prompt in milliseconds
    (copy-on-write RAM: each restore is independent of the others)."""

    PROMPT = rb"root@kvmkit:~# "

    def __init__(self, path: Path, boot_log: str, boot_seconds: float, boot_stats: dict) -> None:
        self.path, self.boot_log, self.boot_seconds = path, boot_log, boot_seconds
        self.boot_stats = boot_stats     # query_stats() of the boot, at the save

    def restore(self, **overrides):
        """A started machine at the shell (close it after)."""
        import kvmkit
        return kvmkit.VM.restore(self.path, **overrides).start()


@pytest.fixture(scope="session")
def fast_shell(tmp_path_factory) -> ShellSnapshot:
    """One boot of the fast guest (2 vCPUs, 128 MiB) per session, saved at
    its shell: slow tests restore it instead of booting their own."""
    import time

    from kvmkit.guest.assets import fast_guest
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine
    g = fast_guest(build=True, progress=False)
    d = tmp_path_factory.mktemp("fast-shell")
    t0 = time.monotonic()
    m = Machine(VmConfig.build(g.vmlinux, initrd=g.initrd, cmdline=g.cmdline, memory="128M", cpus=2,
                               serial=f"file:{d / 'boot.log'}"))
    try:
        m.start()
        m.console.expect(ShellSnapshot.PROMPT, timeout=900, alive=lambda: m.running)
        time.sleep(0.3)                 # the shell settles into its read()
        m.save_snapshot(d / "snap")
        boot_log, stats = m.console.text, m.query_stats()
    finally:
        m.close()
    return ShellSnapshot(d / "snap", boot_log, time.monotonic() - t0, stats)
