"""--qmp address spelling (QEMU's) and the loopback-only rule."""

from __future__ import annotations

import pytest

from kvmkit.cli.qmp import parse_qmp_address
from kvmkit.errors import ConfigError
from kvmkit.monitor.address import QmpAddress, check_loopback


@pytest.mark.parametrize("spec, expected", [
    ("unix:/run/vm.qmp", QmpAddress("unix", path="/run/vm.qmp")),
    ("/run/vm.qmp", QmpAddress("unix", path="/run/vm.qmp")),
    ("unix:/run/vm.qmp,server,wait=off", QmpAddress("unix", path="/run/vm.qmp")),
    ("unix:/run/vm.qmp,server,nowait", QmpAddress("unix", path="/run/vm.qmp")),
    ("unix:/run/vm.qmp,server", QmpAddress("unix", path="/run/vm.qmp", wait=True)),
    ("unix:/run/vm.qmp,server=on,wait=on", QmpAddress("unix", path="/run/vm.qmp", wait=True)),
    ("tcp:127.0.0.1:4444", QmpAddress("tcp", host="127.0.0.1", port=4444)),
    ("tcp:[::1]:4444,server,wait=off", QmpAddress("tcp", host="::1", port=4444)),
    ("tcp:localhost:0", QmpAddress("tcp", host="localhost", port=0)),
])
def test_parse(spec, expected):
    assert parse_qmp_address(spec) == expected


@pytest.mark.parametrize("spec, fragment", [
    ("", "empty"),
    ("unix:", "path is empty"),
    ("telnet:127.0.0.1:4444", "unix:PATH or tcp:HOST:PORT"),
    ("tcp:127.0.0.1", "tcp:HOST:PORT"),
    ("tcp:127.0.0.1:http", "not a number"),
    ("tcp:127.0.0.1:70000", "out of range"),
    ("unix:/x,wait=maybe", "on/off"),
    ("unix:/x,color=red", "unknown option"),
])
def test_parse_errors_name_the_problem(spec, fragment):
    with pytest.raises(ConfigError, match=fragment):
        parse_qmp_address(spec)


@pytest.mark.parametrize("spec", ["tcp:127.0.0.1:1", "tcp:localhost:1", "tcp:[::1]:1",
                                  "unix:/anything"])
def test_loopback_and_unix_are_allowed(spec):
    check_loopback(parse_qmp_address(spec))


@pytest.mark.parametrize("spec", ["tcp:0.0.0.0:1", "tcp::1", "tcp:8.8.8.8:1"])
def test_non_loopback_is_refused_unless_allowed(spec):
    address = parse_qmp_address(spec)
    with pytest.raises(ConfigError, match="loopback|every interface"):
        check_loopback(address)
    check_loopback(address, allow_remote=True)
