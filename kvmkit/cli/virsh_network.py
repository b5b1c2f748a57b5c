"""virsh's network commands (``net-*``) and ``domifaddr``: libvirt's virtual
networks — a bridge with NAT, routing or nothing beyond it, and dnsmasq for
DHCP and DNS — over :mod:`kvmkit.manager.networks`."""

from __future__ import annotations

import ipaddress
import time
from typing import Any

from kvmkit.cli.virsh import LookupFailed, command, domain_of
from kvmkit.cli.virsh_output import fields, table
from kvmkit.manager.errors import NoNetwork


def _net(host, name: str):
    try:
        return host.networks.info(name)
    except NoNetwork:
        raise LookupFailed(f"failed to get network '{name}'") from None


def net_define(host, a) -> str:
    from kvmkit.cli.virsh_domain import _read
    info = host.networks.define(_read(a.file), a.file)
    return f"Network {info.name} defined from {a.file}\n"


def _action(method: str, message: str):
    def run(host, a) -> str:
        info = _net(host, a.network)
        getattr(host.networks, method)(info.name)
        return f"Network {info.name} {message}\n"
    return run


def net_list(host, a) -> str:
    nets = host.networks.list(active=not a.inactive or a.all, inactive=a.all or a.inactive)
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    return table(["Name", "State", "Autostart", "Persistent"],
                 [[n.name, "active" if n.active else "inactive", yes(n.autostart), yes(n.persistent)]
                  for n in nets])


def net_info(host, a) -> str:
    n = _net(host, a.network)
    yes = lambda b: "yes" if b else "no"  # noqa: E731
    return fields([("Name", n.name), ("UUID", n.uuid), ("Active", yes(n.active)),
                   ("Persistent", yes(n.persistent)), ("Autostart", yes(n.autostart)), ("Bridge", n.bridge)])


def net_dumpxml(host, a) -> str:
    return host.networks.dumpxml(_net(host, a.network).name)


def net_autostart(host, a) -> str:
    info = _net(host, a.network)
    host.networks.set_autostart(info.name, not a.disable)
    return f"Network {info.name} {'unmarked' if a.disable else 'marked'} as autostarted\n"


def net_dhcp_leases(host, a) -> str:
    info = _net(host, a.network)
    prefix = info.definition.address.network.prefixlen if info.definition.address else 32
    rows = []
    for lease in sorted(host.networks.leases(info.name), key=lambda x: ipaddress.IPv4Address(x.ip)):
        if a.mac and lease.mac != a.mac.lower():
            continue
        expiry = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.expiry)) if lease.expiry else "never"
        rows.append([expiry, lease.mac, "ipv4", f"{lease.ip}/{prefix}", lease.hostname or "-",
                     lease.client_id or "-"])
    return table(["Expiry Time", "MAC address", "Protocol", "IP address", "Hostname", "Client ID or DUID"], rows)


def domifaddr(host, a) -> str:
    info = domain_of(host, a.domain)
    rows = [[tap, mac, "ipv4", addr] for tap, mac, addr in host.domifaddr(info.name)
            if not a.interface or a.interface in (tap, mac)]
    return table(["Name", "MAC address", "Protocol", "Address"], rows)


def register(sub: Any) -> None:
    p = command(sub, "net-define", net_define, "define an inactive persistent virtual network from an XML file",
                "Failed to define network from {file}")
    p.add_argument("file", metavar="FILE", help="file containing an XML network description")
    for name, method, message, verb, what in (
            ("net-start", "start", "started", "start", "start an inactive network"),
            ("net-destroy", "destroy", "destroyed", "destroy",
             "stop an active network: dnsmasq, its firewall table and its bridge go"),
            ("net-undefine", "undefine", "has been undefined", "undefine", "undefine an inactive network")):
        command(sub, name, _action(method, message), what,
                f"Failed to {verb} network {{network}}").add_argument("network", metavar="NETWORK")
    p = command(sub, "net-list", net_list, "list networks (active ones unless --all or --inactive)")
    p.add_argument("--all", action="store_true", help="active and inactive")
    p.add_argument("--inactive", action="store_true", help="inactive only")
    command(sub, "net-info", net_info, "network information").add_argument("network", metavar="NETWORK")
    command(sub, "net-dumpxml", net_dumpxml, "network information in XML").add_argument("network", metavar="NETWORK")
    p = command(sub, "net-autostart", net_autostart, "start a network with `host-autostart`",
                "failed to mark network {network} as autostarted")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("--disable", action="store_true", help="no longer autostart it")
    p = command(sub, "net-dhcp-leases", net_dhcp_leases, "print the DHCP leases of a network (from its dnsmasq)")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("--mac", help="only this MAC address's lease")
    p = command(sub, "domifaddr", domifaddr, "a running domain's interface addresses (from its networks' DHCP leases)")
    p.add_argument("domain", metavar="DOMAIN", help="domain name, id or uuid")
    p.add_argument("interface", metavar="INTERFACE", nargs="?", help="only this interface (tap name or MAC)")
    p.add_argument("--source", choices=("lease",), default="lease", help="where addresses come from (lease)")
