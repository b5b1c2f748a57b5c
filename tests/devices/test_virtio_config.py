"""CLI option parsers: good specs parse, bad ones name the key and value."""

from __future__ import annotations

import pytest

from kvmkit.devices.virtio.config import (
    BalloonSpec, DiskSpec, NetSpec, VirtioSpecs, VsockSpec, parse_balloon, parse_console,
    parse_disk, parse_mac, parse_net, parse_transport, parse_vsock)
from kvmkit.errors import ConfigError


def test_disk_full():
    assert parse_disk("path=/i.qcow2,format=qcow2,readonly=on,cache=none,discard=unmap,serial=abc") == \
        DiskSpec("/i.qcow2", "qcow2", True, "none", True, "abc")
    assert parse_disk("/x.img") == DiskSpec("/x.img")


@pytest.mark.parametrize("text, needle", [
    ("format=raw", "path"), ("path=a,format=vmdk", "format='vmdk'"), ("path=a,readonly=maybe", "readonly"),
    ("path=a,cache=sometimes", "cache='sometimes'"), ("path=a,bogus=1", "'bogus'"), ("path=a,path=b", "twice"),
    ("path=a,discard=yes", "discard"), ("path=a,serial=" + "x" * 21, "serial")])
def test_disk_errors(text, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        parse_disk(text)


def test_net():
    assert parse_net("tap=tap0,mac=52:54:00:AA:bb:cc") == NetSpec("tap0", "52:54:00:aa:bb:cc")
    assert parse_net("") == NetSpec()
    assert parse_net("tap=t1,bridge=virbr0") == NetSpec("t1", None, "virbr0")
    assert parse_mac("52:54:00:aa:bb:cc") == bytes.fromhex("525400aabbcc")
    for bad, needle in [("mac=zz", "mac"), ("mac=01:00:00:00:00:01", "multicast"), ("tap=" + "t" * 16, "tap"),
                        ("bridge=" + "b" * 16, "bridge"), ("bridge=a/b", "bridge")]:
        with pytest.raises(ConfigError, match=needle):
            parse_net(bad)


def test_console_rng_balloon_vsock_transport():
    assert parse_console("virtio").out is None
    assert parse_console("virtio,out=/tmp/c").out == "/tmp/c"
    with pytest.raises(ConfigError, match="serial"):
        parse_console("serial")
    assert parse_balloon() == BalloonSpec(True)
    assert parse_balloon("deflate-on-oom=off") == BalloonSpec(False)
    assert parse_vsock("cid=3,uds=/tmp/v") == VsockSpec(3, "/tmp/v")
    for bad, needle in [("cid=2,uds=/x", "cid=2"), ("cid=x,uds=/x", "cid='x'"), ("cid=3", "uds")]:
        with pytest.raises(ConfigError, match=needle):
            parse_vsock(bad)
    assert parse_transport("mmio") == "mmio"
    with pytest.raises(ConfigError, match="virtio-transport"):
        VirtioSpecs(transport="isa")
    specs = VirtioSpecs(disks=(DiskSpec("/a"),), rng=True)
    assert not specs.empty and VirtioSpecs().empty
    hash(specs)
