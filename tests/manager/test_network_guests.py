"""Two fast Linux guests on a NAT network, for real: each gets its address
from the network's dnsmasq (one from the range, one a static host), they
ping each other and the host side, reach a server in the "outside"
namespace through the masquerade (the server sees the uplink's address,
not the guest's), and ``domifaddr`` / ``net-dhcp-leases`` show the leases."""

from __future__ import annotations

import os
import re
import sys

import pytest

from kvmkit.manager import Host

from .helpers import REPO
from .helpers_net import network_domain_xml
from .netlab import UPLINK_IP, WORLD_IP, NetLab, dnsmasq_processes
from .sockconsole import PROMPT, SocketConsole

pytestmark = [pytest.mark.kvm, pytest.mark.slow, pytest.mark.userspace,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces")]

NET = """<network><name>lab</name><forward mode='nat'/><bridge name='kbr0'/><domain name='lab.test'/>
<ip address='192.168.77.1' netmask='255.255.255.0'><dhcp><range start='192.168.77.100' end='192.168.77.150'/>
<host mac='52:54:00:77:00:0b' name='guest-b' ip='192.168.77.11'/></dhcp></ip></network>"""
MACS = {"a": "52:54:00:77:00:0a", "b": "52:54:00:77:00:0b"}
BOOT_TIMEOUT = 600.0              # two guests booting on two shared cores

# udhcpc's hook (busybox runs it with the lease in the environment), written at the prompt
DHCP_HOOK = ("printf '#!/bin/sh\\ncase \"$1\" in bound|renew) ip addr add $ip/$mask dev $interface; "
             "[ -n \"$router\" ] && ip route add default via ${router%%%% *};; esac\\nexit 0\\n' "
             "> /tmp/dhcp.sh; chmod +x /tmp/dhcp.sh")


def dhcp(console: SocketConsole, hostname: str) -> str:
    """Bring eth0 up with DHCP; the address the guest got."""
    assert console.shell(DHCP_HOOK)[0] == 0
    status, out = console.shell(f"ip link set eth0 up; udhcpc -i eth0 -s /tmp/dhcp.sh -q -n -t 30 -T 2 "
                                f"-x hostname:{hostname} 2>&1", timeout=300)
    assert status == 0, out
    m = re.search(r"lease of (\S+) obtained", out)
    assert m, out
    status, out = console.shell("ip -4 addr show eth0")
    assert f"inet {m.group(1)}/24" in out, out
    return m.group(1)


@pytest.fixture
def lab():
    lab = NetLab("guests")
    yield lab
    lab.close()


def test_two_guests_on_a_nat_network(lab, state_dir, tmp_path):
    from kvmkit.guest.assets import fast_guest
    g = fast_guest(build=False)
    world = lab.tcp_listener(7777)
    consoles: dict[str, SocketConsole] = {}
    with lab.entered():
        host = Host(state_dir)
        try:
            host.networks.define(NET)
            host.networks.start("lab")
            for name, mac in MACS.items():
                host.define(network_domain_xml(name, g.vmlinux, "lab", initrd=g.initrd, cmdline=g.cmdline,
                                               memory_mib=128, serial=str(tmp_path / f"{name}.sock"), mac=mac))
                host.start(name)
            for name in MACS:
                consoles[name] = SocketConsole(str(tmp_path / f"{name}.sock"))
            for name in MACS:
                consoles[name].expect(PROMPT, BOOT_TIMEOUT)
            ip = {name: dhcp(c, f"guest-{name}") for name, c in consoles.items()}
            assert ip["b"] == "192.168.77.11"                             # the static host entry
            assert 100 <= int(ip["a"].rsplit(".", 1)[1]) <= 150            # from the range

            for me, other in (("a", "b"), ("b", "a")):
                status, out = consoles[me].shell(f"ping -c 2 -W 10 {ip[other]}", timeout=120)
                assert status == 0 and "2 packets received" in out, out
            status, out = consoles["a"].shell("ping -c 2 -W 10 192.168.77.1", timeout=120)
            assert status == 0 and "2 packets received" in out, out

            # out through the NAT: the outside server sees the uplink address
            status, out = consoles["a"].shell(f"echo hello-from-a | nc {WORLD_IP} 7777", timeout=120)
            assert status == 0, out
            assert world.clients == [(UPLINK_IP, b"hello-from-a\n")]
            status, out = consoles["b"].shell(f"ping -c 1 -W 10 {WORLD_IP}", timeout=120)
            assert status == 0, out

            for name, mac in MACS.items():
                tap = host.lookup(name).definition.interfaces[0].target
                assert host.domifaddr(name) == [(tap, mac, f"{ip[name]}/24")]
            tap_a = host.lookup("a").definition.interfaces[0].target
            env = dict(os.environ, PYTHONPATH=str(REPO))
            virsh = [sys.executable, "-m", "kvmkit.cli.main", "virsh", "-q", "-c", str(state_dir)]
            out = lab.run(virsh + ["domifaddr", "a"], env=env).stdout.splitlines()
            assert out[2].split() == [tap_a, MACS["a"], "ipv4", f"{ip['a']}/24"], out
            rows = [r.split() for r in lab.run(virsh + ["net-dhcp-leases", "lab"], env=env).stdout.splitlines()[2:]]
            assert [(r[2], r[4], r[5]) for r in rows] == [
                (MACS["b"], f"{ip['b']}/24", "guest-b"), (MACS["a"], f"{ip['a']}/24", "guest-a")], rows
            leases = {lease.mac: (lease.ip, lease.hostname) for lease in host.networks.leases("lab")}
            assert leases == {MACS["a"]: (ip["a"], "guest-a"), MACS["b"]: (ip["b"], "guest-b")}
        finally:
            for c in consoles.values():
                c.close()
            for name in MACS:
                if host.lookup(name).active if name in host.store.names() else False:
                    host.destroy(name)
            world.close()
            if host.networks.names() and host.networks.info("lab").active:
                host.networks.destroy("lab")
    assert set(lab.links()) == {"lo", "uplink"}
    assert lab.nft_tables() == [] and dnsmasq_processes(state_dir) == []
