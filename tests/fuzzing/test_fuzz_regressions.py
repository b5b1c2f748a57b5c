"""The crashes fuzzing found, each pinned by the input that found it."""

from __future__ import annotations

import hashlib
import io
import json
import os

import pytest

from kvmkit.errors import KvmkitError


def test_net_driver_asking_for_ecn_without_tso_does_not_kill_the_vmm():
    """virtio-net: GUEST_CSUM|GUEST_ECN without GUEST_TSO4/6 made TUNSETOFFLOAD
    fail with EINVAL inside set_status (a vCPU thread): the device now offers
    the tap only what it accepts, and any backend refusal sets NEEDS_RESET."""
    from kvmkit.devices.virtio.constants import F_VERSION_1, Status
    from kvmkit.devices.virtio.net import F_GUEST_CSUM, F_GUEST_ECN, VirtioNet
    from kvmkit.memory.guest_memory import GuestMemory
    from kvmkit.net.tap import Tap
    mem = GuestMemory.anonymous([(0, 1 << 20)])
    dev = VirtioNet(mem, "net-ecn", Tap.open(f"kvre{os.getpid() % 100000}"))
    try:
        want = (1 << F_VERSION_1) | (1 << F_GUEST_CSUM) | (1 << F_GUEST_ECN)
        assert dev.features & want == want
        dev.set_status(Status.ACKNOWLEDGE | Status.DRIVER)
        dev.set_driver_word(0, want & 0xFFFFFFFF)
        dev.set_driver_word(1, want >> 32)
        dev.set_status(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK)
        dev.set_status(Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK)
        assert dev.running and not dev.status & Status.DEVICE_NEEDS_RESET
    finally:
        dev.close()


@pytest.mark.parametrize("entry, message", [
    ("name-nul", "contains a NUL byte"), ("mode", "does not fit in 32 bits"),
    ("surrogate", "not valid UTF-8"), ("rdev", "does not fit in 32 bits")])
def test_cpio_refuses_what_newc_cannot_store(entry, message):
    """A NUL in a name made the kernel unpack a different file name, and a
    field past 32 bits shifted every later header field (or raised
    OverflowError); both are now a ValueError naming the entry."""
    from kvmkit.guest import cpio
    e = {"name-nul": cpio.regular("etc/pass\0wd", b"x"), "mode": cpio.Entry("a", 1 << 32),
         "surrogate": cpio.regular("bad\udc80", b""), "rdev": cpio.char_device("dev/x", 1 << 32, 0)}[entry]
    buf = io.BytesIO()
    with pytest.raises(ValueError, match=message):
        cpio.write(buf, [cpio.directory("etc"), e])


def _state_dir(tmp_path, body: bytes):
    from kvmkit.vmm import snapshot as snap
    header = {"magic": snap.MAGIC, "version": snap.STATE_VERSION, "length": len(body),
              "sha256": hashlib.sha256(body).hexdigest()}
    (tmp_path / snap.STATE_FILE).write_bytes(json.dumps(header).encode() + b"\n" + body)
    (tmp_path / snap.MEMORY_FILE).write_bytes(bytes(4096))
    return tmp_path


@pytest.mark.parametrize("body, message", [
    (b"{nope", "state body is not valid"),
    (b"\xff\xfe\x00\x00", "state body is not valid"),
    (b'{"x": {"$bytes": "zz"}}', "state body is not valid"),
    (b"[]", "not an object"),
    (b'{"memory-file-size": "4096"}', "memory-file-size"),
    (b'{"memory-file-size": 4096, "memory-regions": [{"gpa": 0}]}', "memory-regions"),
    (b'{"memory-file-size": 4096, "memory-regions": []}', "config record is missing")])
def test_snapshot_state_body_damage_is_one_line(tmp_path, body, message):
    """A state body with a valid checksum but not kvmkit's shape raised
    JSONDecodeError/UnicodeDecodeError/KeyError/TypeError from Snapshot.open."""
    from kvmkit.vmm.snapshot import Snapshot, SnapshotError
    with pytest.raises(SnapshotError, match=message):
        Snapshot.open(_state_dir(tmp_path, body))


def test_snapshot_damaged_config_record_is_one_line(tmp_path):
    from kvmkit.vmm.snapshot import Snapshot, SnapshotError
    body = json.dumps({"memory-file-size": 4096, "memory-regions": [{"gpa": 0, "size": 4096}],
                       "host-compat": "off", "config": {"kernel": 5}}).encode()
    s = Snapshot.open(_state_dir(tmp_path, body))
    with pytest.raises(SnapshotError, match="config record is damaged"):
        s.config()
    assert issubclass(SnapshotError, KvmkitError)


@pytest.mark.parametrize("phoff", [1 << 62, 1 << 63, 4096])
def test_elf_program_headers_outside_the_file_are_one_line(tmp_path, phoff):
    """An ELF header whose e_phoff points past the file (or past what seek
    takes) raised OSError, ValueError or struct.error from parse_kernel."""
    import struct as st

    from kvmkit.arch.x86.loader import parse_kernel
    from kvmkit.errors import ConfigError
    ehdr = bytearray(64)
    ehdr[:6] = b"\x7fELF\x02\x01"
    st.pack_into("<HHIQQQIHHH", ehdr, 16, 2, 62, 1, 0x100000, phoff, 0, 0, 64, 56, 1)
    path = tmp_path / "k"
    path.write_bytes(bytes(ehdr))
    with pytest.raises(ConfigError, match="program headers lie outside the file"):
        parse_kernel(path)
