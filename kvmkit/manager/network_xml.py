"""libvirt network XML ⇄ :class:`NetworkDef`, with the same three kinds of
answer as domain XML: not well-formed (:class:`XmlError`, line and column),
a wrong value (:class:`XmlError` naming the element and line: a DHCP range
outside the subnet, a start after its end), and libvirt features kvmkit
lacks (:class:`Unsupported`, every one by path: ``forward@mode=bridge``,
``ip@family=ipv6``, ``dns/forwarder``...)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from kvmkit.host.dnsmasq import StaticHost
from kvmkit.manager.domain_parse import _uuid_of   # the same rules as a domain's <uuid>
from kvmkit.manager.errors import Unsupported
from kvmkit.manager.network import DhcpRange, NetworkDef
from kvmkit.manager.reader import Reader
from kvmkit.manager.xmltree import element, parse as parse_tree, serialise

_NAME_BAD = re.compile(r"[/\x00-\x20\x7f]")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_IFNAME_BAD = re.compile(r"[/:\s]")
_DOMAIN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$")
BRIDGE_TEMPLATE = "virbr%d"


class _NetworkReader(Reader):
    root_name = "network"


def parse_network(text: str | bytes, source: str = "(network_definition)",
                  taken_bridges: Iterable[str] = ()) -> NetworkDef:
    """Parse and validate; a missing bridge name becomes the first
    ``virbrN`` not in ``taken_bridges``."""
    root = parse_tree(text, source)
    unsupported: list[str] = []
    r = _NetworkReader(root, "", unsupported, source)
    if root.tag != "network":
        raise r.error(f"the root element is <{root.tag}>, not <network>")
    r.attr("connections")                      # live XML fed back
    name = r.child_text("name")
    if not name:
        raise r.error("a <name> is required")
    if _NAME_BAD.search(name) or name in (".", "..") or len(name) > 200:
        raise r.error(f"name {name!r} may not contain '/', spaces or control characters")
    uuid = _uuid_of(r)
    forward = _forward(r)
    bridge, stp, delay = _bridge(r, taken_bridges)
    mac = _mac(r)
    domain = _domain(r)
    address, ranges, hosts = _ips(r)
    r.done()
    if unsupported:
        raise Unsupported(unsupported)
    return NetworkDef(name, uuid, bridge, forward, address, ranges, hosts, domain, mac, stp, delay)


def _forward(r: Reader) -> str:
    f = r.child("forward")
    if f is None:
        return "isolated"
    mode = f.attr("mode", ("nat", "route"), "nat")
    f.done()
    return mode or "nat"


def _bridge(r: Reader, taken: Iterable[str]) -> tuple[str, bool, int]:
    b = r.child("bridge")
    name, stp, delay = None, True, 0
    if b is not None:
        name = b.attr("name")
        stp = b.attr("stp", ("on", "off"), "on") == "on"
        text = b.attr("delay", default="0")
        if not text.isdigit() or int(text) > 30:
            raise b.error(f"delay {text!r} must be whole seconds from 0 to 30")
        delay = int(text)
        b.done()
        if name is not None and (not name or len(name.encode()) > 15 or _IFNAME_BAD.search(name)):
            raise b.error(f"bridge name {name!r} must be 1-15 characters without '/', ':' or spaces")
    if not name:
        used = set(taken)
        name = next(BRIDGE_TEMPLATE % i for i in range(1000) if BRIDGE_TEMPLATE % i not in used)
    return name, stp, delay


def _mac(r: Reader) -> str | None:
    m = r.child("mac")
    if m is None:
        return None
    mac = (m.attr("address") or "").lower()
    m.done()
    if not _MAC.match(mac) or int(mac[:2], 16) & 1:
        raise m.error(f"{mac!r} is not a unicast MAC address")
    return mac


def _domain(r: Reader) -> str | None:
    d = r.child("domain")
    if d is None:
        return None
    name = d.attr("name")
    d.attr("localOnly", ("yes",))
    d.done()
    if not name or not _DOMAIN.match(name):
        raise d.error(f"domain name {name!r} is not a DNS name")
    return name


def _addr(x: Reader, attr: str) -> ipaddress.IPv4Address:
    text = x.attr(attr)
    try:
        return ipaddress.IPv4Address(text or "")
    except ValueError:
        raise x.error(f"{attr} {text!r} is not an IPv4 address") from None


def _ips(r: Reader):
    ips = []
    for y in r.children("ip"):
        y.attr("family", ("ipv4",))
        if y.node.attrs.get("family", "ipv4") == "ipv4":
            ips.append(y)
    if not ips:
        return None, (), ()
    for extra in ips[1:]:
        extra.report("ip (a second IPv4 one: kvmkit networks have one subnet)")
    x = ips[0]
    ip = _addr(x, "address")
    netmask, prefix = x.attr("netmask"), x.attr("prefix")
    if netmask is not None and prefix is not None:
        raise x.error("give netmask or prefix, not both")
    try:
        address = ipaddress.IPv4Interface(f"{ip}/{netmask or prefix or 24}")
    except ValueError:
        raise x.error(f"netmask {netmask or prefix!r} is not an IPv4 netmask or prefix length") from None
    net = address.network
    if net.prefixlen > 30 or ip in (net.network_address, net.broadcast_address):
        raise x.error(f"{address} cannot be a gateway address (the network or broadcast address, "
                      "or a subnet smaller than /30)")
    ranges, hosts = (), ()
    dhcp = x.child("dhcp")
    if dhcp is not None:
        ranges = tuple(_range(y, address) for y in dhcp.children("range"))
        hosts = tuple(_host(y, address) for y in dhcp.children("host"))
        dhcp.done()
        _no_duplicates(dhcp, hosts)
    x.done()
    return address, ranges, hosts


def _range(y: Reader, address: ipaddress.IPv4Interface) -> DhcpRange:
    start, end = _addr(y, "start"), _addr(y, "end")
    y.done()
    net = address.network
    for what, a in (("start", start), ("end", end)):
        if a not in net or a in (net.network_address, net.broadcast_address):
            raise y.error(f"range {what} {a} is not a host address of {net}")
    if int(start) > int(end):
        raise y.error(f"range start {start} is after its end {end}")
    if int(start) <= int(address.ip) <= int(end):
        raise y.error(f"range {start}-{end} contains the network's own address {address.ip}")
    return DhcpRange(start, end)


def _host(y: Reader, address: ipaddress.IPv4Interface) -> StaticHost:
    mac = (y.attr("mac") or "").lower()
    name = y.attr("name")
    y.attr("id")
    if y.node.attrs.get("id"):
        y.report("ip/dhcp/host@id")
    ip = _addr(y, "ip")
    y.done()
    if not _MAC.match(mac):
        raise y.error(f"host mac {mac!r} is not a MAC address")
    if ip not in address.network or ip == address.ip or ip in (address.network.network_address,
                                                                 address.network.broadcast_address):
        raise y.error(f"host ip {ip} is not a free host address of {address.network}")
    if name is not None and not _DOMAIN.match(name):
        raise y.error(f"host name {name!r} is not a DNS name")
    return StaticHost(mac, ip, name)


def _no_duplicates(r: Reader, hosts: tuple[StaticHost, ...]) -> None:
    for attr in ("mac", "ip"):
        seen = [getattr(h, attr) for h in hosts]
        dup = next((v for v in seen if seen.count(v) > 1), None)
        if dup is not None:
            raise r.error(f"two hosts have {attr} {dup}")


def network_xml(n: NetworkDef, connections: int | None = None) -> str:
    """The document as ``virsh net-dumpxml`` writes it (libvirt's schema accepts it)."""
    ip = None
    if n.address is not None:
        dhcp = element("dhcp", children=[
            *(element("range", start=str(r.start), end=str(r.end)) for r in n.ranges),
            *(element("host", mac=h.mac, name=h.name, ip=str(h.ip)) for h in n.hosts)]) if n.dhcp else None
        ip = element("ip", address=str(n.address.ip), netmask=str(n.address.netmask), children=[dhcp])
    children = [
        element("name", n.name), element("uuid", n.uuid),
        element("forward", mode=n.forward) if n.forward != "isolated" else None,
        element("bridge", name=n.bridge, stp="on" if n.stp else "off", delay=str(n.delay)),
        element("mac", address=n.mac) if n.mac else None,
        element("domain", name=n.domain) if n.domain else None,
        ip]
    return serialise(element("network", children=children,
                             connections=str(connections) if connections else None))
