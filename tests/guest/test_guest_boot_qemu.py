"""The built guests really boot and run /init, checked under QEMU's TCG emulator.

TCG (pure software emulation) runs guest user space on any host, including
the nested ones where KVM cannot, so these tests check the assets themselves
(kernel config, initramfs, /init) independently of kvmkit's VMM. They use the
cached builds; building the fast kernel takes minutes, hence ``slow``.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from kvmkit.guest.assets import GuestAssets, fast_guest, stock_guest
from kvmkit.guest.errors import PackageFetchError
from kvmkit.guest.initramfs import run_parameter

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")]

DRIVERS = ("virtio_blk", "virtio_net", "virtio_console", "virtio_balloon", "virtio_rng",
           "vmw_vsock_virtio_transport")
PROBE = "echo probe-cpus=$(nproc); grep -c virtio /proc/interrupts >/dev/null; ls /sys/bus/virtio/drivers; exit 7"


def _boot(assets: GuestAssets, kernel: str, extra: str, timeout: float) -> str:
    argv = [QEMU, "-accel", "tcg", "-M", "pc", "-cpu", "max", "-m", "256", "-smp", "2",
            "-nographic", "-no-reboot", "-kernel", kernel, "-initrd", str(assets.initrd),
            "-append", f"{assets.cmdline} {extra}"]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, errors="replace",
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        pytest.fail(f"guest did not power off within {timeout} s; console tail:\n{out[-3000:]}")
    return proc.stdout


def _get(factory) -> GuestAssets:  # type: ignore[no-untyped-def]
    try:
        return factory(build=True, progress=False)
    except PackageFetchError as err:
        pytest.skip(f"cannot fetch guest packages: {err}")


@pytest.mark.parametrize("encoding", ["b64", "url"])
def test_fast_guest_runs_command_and_powers_off(encoding: str) -> None:
    assets = _get(fast_guest)
    out = _boot(assets, str(assets.bzimage), run_parameter(PROBE, encoding), timeout=300)
    assert "kvmkit-guest: init started" in out
    assert "probe-cpus=2" in out
    for driver in DRIVERS:
        assert driver in out, driver
    assert "kvmkit-guest: run exit=7" in out


@pytest.mark.stock
def test_stock_guest_loads_virtio_modules_and_runs_command() -> None:
    assets = _get(stock_guest)
    out = _boot(assets, str(assets.bzimage), run_parameter(PROBE), timeout=900)
    assert "kvmkit-guest: init started" in out
    assert "kvmkit-guest: insmod" not in out  # /init reports each module that failed to load
    for driver in DRIVERS:
        assert driver in out, driver
    assert "kvmkit-guest: run exit=7" in out
