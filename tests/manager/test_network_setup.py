"""Networks set up and torn down for real — bridge, nftables table, dnsmasq —
inside namespaces the test creates (the host's own network is never touched),
and every failure leaves nothing behind."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmkit.manager import Host
from kvmkit.manager.errors import NoNetwork, OperationFailed, OperationInvalid
from .netlab import NetLab, dnsmasq_processes

from .helpers import REPO

pytestmark = [pytest.mark.kvm,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces")]

FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")
NAT = """<network><name>{name}</name><forward mode='{mode}'/><bridge name='{bridge}'/><domain name='lab.test'/>
<ip address='{gw}' netmask='255.255.255.0'><dhcp><range start='{net}.100' end='{net}.150'/>
<host mac='52:54:00:00:00:07' name='fixed' ip='{net}.7'/></dhcp></ip></network>"""


def nat_xml(name: str = "lab", bridge: str = "kbr0", net: str = "192.168.77", mode: str = "nat") -> str:
    return NAT.format(name=name, bridge=bridge, net=net, gw=f"{net}.1", mode=mode)


@pytest.fixture
def lab():
    lab = NetLab("net")
    yield lab
    lab.close()


@pytest.fixture
def nethost(lab, state_dir):
    """A Host whose calls run inside the lab's inside namespace (this thread
    is in it for the whole test); the host's own forwarding is never changed."""
    forwarding = FORWARDING.read_text()
    with lab.entered():
        h = Host(state_dir)
        yield h
        for info in h.networks.list(inactive=False):
            h.networks.destroy(info.name)
    assert FORWARDING.read_text() == forwarding


def _nothing_left(lab: NetLab, state_dir: Path) -> None:
    assert set(lab.links()) == {"lo", "uplink"}
    assert lab.nft_tables() == []
    assert dnsmasq_processes(state_dir) == []


def test_nat_network_start_and_destroy(lab, nethost, state_dir):
    nets = nethost.networks
    nets.define(nat_xml())
    assert [(i.name, i.active, i.bridge) for i in nets.list()] == [("lab", False, "kbr0")]
    nets.start("lab")
    assert nets.info("lab").active
    with lab.entered():
        assert lab.links()["kbr0"] == "bridge"
        assert lab.nft_tables() == ["kvmkit_kbr0"]
        rules = lab.run(["nft", "list", "table", "ip", "kvmkit_kbr0"]).stdout
        assert "masquerade" in rules and "192.168.77.0/24" in rules
        assert FORWARDING.read_text() == "1\n"             # in the namespace
        [pid] = dnsmasq_processes(state_dir)
        conf = (state_dir / "networks/run/lab/dnsmasq.conf").read_text()
        assert "interface=kbr0" in conf and "dhcp-range=192.168.77.100,192.168.77.150,255.255.255.0" in conf
        assert "dhcp-host=52:54:00:00:00:07,192.168.77.7,fixed" in conf and "domain=lab.test" in conf
        # dnsmasq answers DNS on the bridge address for the static host's name
        res = lab.run([sys.executable, "-c", DNS_QUERY, "192.168.77.1", "fixed.lab.test"])
        assert res.stdout.strip() == "192.168.77.7", res.stderr
    with pytest.raises(OperationInvalid, match="already active"):
        nets.start("lab")
    with pytest.raises(OperationInvalid, match="still active"):
        nets.undefine("lab")
    nets.destroy("lab")
    assert not nets.info("lab").active
    _nothing_left(lab, state_dir)
    with pytest.raises(OperationInvalid, match="not active"):
        nets.destroy("lab")
    nets.undefine("lab")
    with pytest.raises(NoNetwork):
        nets.info("lab")


# A DNS A query by hand (the host has no dig): the answer's last 4 bytes are the address.
DNS_QUERY = r"""
import socket, struct, sys
server, name = sys.argv[1:]
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"".join(
    bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(5); s.sendto(q, (server, 53))
r = s.recv(512)
print(socket.inet_ntoa(r[-4:]) if struct.unpack(">H", r[6:8])[0] else "no answer")
"""


@pytest.mark.parametrize("mode, expect, absent", [("route", "accept", "masquerade"),
                                                  ("isolated", "reject", "accept\n\t\tiifname")])
def test_route_and_isolated_modes(lab, nethost, state_dir, mode, expect, absent):
    xml = nat_xml(mode=mode).replace("<forward mode='isolated'/>", "")
    nethost.networks.define(xml)
    nethost.networks.start("lab")
    rules = lab.run(["nft", "list", "table", "ip", "kvmkit_kbr0"]).stdout
    assert expect in rules and "masquerade" not in rules
    if mode == "isolated":
        conf = (state_dir / "networks/run/lab/dnsmasq.conf").read_text()
        assert "dhcp-option=3" in conf         # no default route offered
    nethost.networks.destroy("lab")
    _nothing_left(lab, state_dir)


def test_two_networks_coexist_and_conflicts_are_refused(lab, nethost, state_dir):
    nets = nethost.networks
    nets.define(nat_xml())
    nets.define(nat_xml("other", "kbr1", "192.168.78"))
    nets.start("lab")
    nets.start("other")
    assert len(dnsmasq_processes(state_dir)) == 2 and sorted(lab.nft_tables()) == ["kvmkit_kbr0", "kvmkit_kbr1"]
    with pytest.raises(OperationFailed, match="bridge name 'kbr0' is already used by network 'lab'"):
        nets.define(nat_xml("third", "kbr0", "192.168.79"))
    nets.define(nat_xml("third", "kbr2", "192.168.77"))     # same subnet as lab: refused at start
    with pytest.raises(OperationFailed, match=r"network 192.168.77.0/24 is already in use by interface kbr0"):
        nets.start("third")
    nets.destroy("other")
    assert lab.nft_tables() == ["kvmkit_kbr0"] and set(lab.links()) == {"lo", "uplink", "kbr0"}


def test_a_taken_bridge_name_is_refused_and_left_alone(lab, nethost, state_dir):
    from pyroute2 import IPRoute
    with lab.entered(), IPRoute() as ipr:
        ipr.link("add", ifname="kbr0", kind="veth", peer="kbr0p")
    nethost.networks.define(nat_xml())
    with pytest.raises(OperationFailed, match="bridge name 'kbr0' is already in use by an interface"):
        nethost.networks.start("lab")
    assert lab.links()["kbr0"] == "veth"              # someone else's: untouched
    assert lab.nft_tables() == [] and dnsmasq_processes(state_dir) == []
    assert not nethost.networks.info("lab").active


def _bin_dir(tmp_path: Path, dnsmasq_script: str | None) -> str:
    """A PATH with nft but either no dnsmasq or a fake one."""
    d = tmp_path / "bin"
    d.mkdir()
    (d / "nft").symlink_to("/usr/sbin/nft")
    if dnsmasq_script is not None:
        (d / "dnsmasq").write_text("#!/bin/sh\n" + dnsmasq_script)
        (d / "dnsmasq").chmod(stat.S_IRWXU)
    return f"{d}:/usr/bin:/bin"


@pytest.mark.parametrize("script, message", [
    (None, "dnsmasq not found in PATH"),
    ("echo 'dnsmasq: failed to create listening socket: simulated' >&2; exit 2",
     r"dnsmasq failed to start \(exit status 2\): dnsmasq: failed to create listening socket: simulated"),
    ("exit 0", "dnsmasq exited right after starting"),
    ("kill -SEGV $$", "dnsmasq failed to start"),
])
def test_dnsmasq_missing_or_crashing_leaves_nothing(lab, nethost, state_dir, tmp_path, monkeypatch,
                                                     script, message):
    nethost.networks.define(nat_xml())
    monkeypatch.setenv("PATH", _bin_dir(tmp_path, script))
    with pytest.raises(OperationFailed, match=message):
        nethost.networks.start("lab")
    _nothing_left(lab, state_dir)
    assert not nethost.networks.info("lab").active
    monkeypatch.undo()
    nethost.networks.start("lab")                     # the real one works afterwards
    assert nethost.networks.info("lab").active


def test_destroy_after_dnsmasq_died_cleans_up(lab, nethost, state_dir):
    nethost.networks.define(nat_xml())
    nethost.networks.start("lab")
    [pid] = dnsmasq_processes(state_dir)
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while dnsmasq_processes(state_dir) and time.monotonic() < deadline:
        time.sleep(0.02)
    nethost.networks.destroy("lab")
    _nothing_left(lab, state_dir)


def test_leftovers_of_a_vanished_bridge_are_cleared_at_the_next_start(lab, nethost, state_dir):
    """As after a host reboot: the record says active, the bridge is gone."""
    from kvmkit.host import bridge
    nethost.networks.define(nat_xml())
    nethost.networks.start("lab")
    bridge.delete("kbr0")
    assert not nethost.networks.info("lab").active
    nethost.networks.start("lab")
    assert len(dnsmasq_processes(state_dir)) == 1 and lab.nft_tables() == ["kvmkit_kbr0"]


def test_virsh_net_commands(lab, state_dir, tmp_path):
    (tmp_path / "n.xml").write_text(nat_xml())
    (tmp_path / "bad.xml").write_text(nat_xml().replace("'192.168.77.150'", "'192.168.77.50'"))
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def virsh(*args: str) -> subprocess.CompletedProcess:
        return lab.run([sys.executable, "-m", "kvmkit.cli.main", "virsh", "-q", "-c", str(state_dir), *args],
                       env=env)

    res = virsh("net-define", str(tmp_path / "bad.xml"))
    assert res.returncode == 1 and "range start 192.168.77.100 is after its end 192.168.77.50" in res.stderr
    assert "Traceback" not in res.stderr
    assert virsh("net-define", str(tmp_path / "n.xml")).stdout == f"Network lab defined from {tmp_path}/n.xml\n"
    assert virsh("net-autostart", "lab").stdout == "Network lab marked as autostarted\n"
    assert virsh("net-list").stdout.splitlines()[2:] == []
    assert virsh("net-list", "--all").stdout.splitlines()[2].split() == ["lab", "inactive", "yes", "yes"]
    assert virsh("host-autostart").stdout == "Network lab started\n"
    assert virsh("net-list").stdout.splitlines()[2].split() == ["lab", "active", "yes", "yes"]
    info = dict(ln.split(":", 1) for ln in virsh("net-info", "lab").stdout.splitlines())
    assert info["Active"].strip() == "yes" and info["Bridge"].strip() == "kbr0"
    dumped = tmp_path / "dumped.xml"
    dumped.write_text(virsh("net-dumpxml", "lab").stdout)
    assert subprocess.run(["virt-xml-validate", str(dumped), "network"], capture_output=True).returncode == 0
    assert virsh("net-dhcp-leases", "lab").stdout.splitlines()[2:] == []
    res = virsh("net-start", "nosuch")
    assert res.returncode == 1 and res.stderr == "error: failed to get network 'nosuch'\n"
    res = virsh("net-undefine", "lab")
    assert res.returncode == 1 and "still active" in res.stderr
    assert virsh("net-destroy", "lab").stdout == "Network lab destroyed\n"
    assert virsh("net-autostart", "lab", "--disable").stdout == "Network lab unmarked as autostarted\n"
    assert virsh("net-undefine", "lab").stdout == "Network lab has been undefined\n"
    _nothing_left(lab, state_dir)


def test_a_domain_on_an_inactive_network_does_not_start(lab, nethost, state_dir, idle):
    from .helpers_net import network_domain_xml
    nethost.networks.define(nat_xml())
    nethost.define(network_domain_xml("d", idle, "lab"))
    with pytest.raises(OperationInvalid, match="network 'lab' is not active"):
        nethost.start("d")
    with pytest.raises(Exception, match="no network with matching name 'gone'"):
        nethost.define(network_domain_xml("e", idle, "gone"))
        nethost.start("e")
    assert nethost.domains(inactive=False) == []


def test_domain_tap_joins_the_network_bridge_and_goes_with_the_vmm(lab, nethost, state_dir, idle):
    from .helpers_net import network_domain_xml
    from kvmkit.host import bridge
    nethost.networks.define(nat_xml())
    nethost.networks.start("lab")
    nethost.define(network_domain_xml("d", idle, "lab"))
    try:
        nethost.start("d")
        tap = nethost.lookup("d").definition.interfaces[0].target
        assert bridge.ports("kbr0") == [tap]
    finally:
        nethost.destroy("d")
    assert bridge.ports("kbr0") == [] and tap not in lab.links()


def test_kvmkit_run_net_bridge(lab, nethost, tiny_guest, tmp_path):
    from kvmkit.host import bridge
    import ipaddress
    bridge.create("runbr", ipaddress.IPv4Interface("10.44.0.1/24"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = [sys.executable, "-m", "kvmkit.cli.main", "run", "--kernel", str(tiny_guest("idle")), "-m", "64M",
           "--serial", "null"]
    res = lab.run(run + ["--net", "tap=rt0,bridge=nosuch"], env=env, timeout=60)
    assert res.returncode == 1 and "cannot add tap rt0 to bridge 'nosuch': no such bridge" in res.stderr
    assert "rt0" not in lab.links() and "Traceback" not in res.stderr
    p = lab.path()
    from .netlab import setns_path
    proc = subprocess.Popen(run + ["--net", "tap=rt0,bridge=runbr"], env=env, preexec_fn=lambda: setns_path(p),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while bridge.ports("runbr") != ["rt0"]:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(30)
    assert "rt0" not in lab.links()
    bridge.delete("runbr")
