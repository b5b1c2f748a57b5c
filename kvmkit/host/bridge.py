"""Linux bridges through netlink (pyroute2): create one with its gateway
address, delete it, attach a port, and ask what names and subnets are taken.

Everything acts in the calling thread's network namespace, so a test (or an
isolated manager) that enters a namespace first never touches the host's
own interfaces.  Creation is all-or-nothing: a bridge whose address or
link-up fails is deleted again before the error is raised.
"""

from __future__ import annotations

import ipaddress
from contextlib import contextmanager
from collections.abc import Iterator

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kvmkit.host.errors import HostNetworkError

IFNAMSIZ = 16


@contextmanager
def _netlink() -> Iterator[IPRoute]:
    try:
        ipr = IPRoute()
    except OSError as e:
        raise HostNetworkError(f"cannot open a netlink socket: {e.strerror}") from None
    try:
        yield ipr
    finally:
        ipr.close()


def check_name(name: str) -> None:
    if not name or len(name.encode()) >= IFNAMSIZ or any(c in name for c in "/ \t\n:") or name in (".", ".."):
        raise HostNetworkError(f"interface name {name!r} must be 1-15 characters without '/', ':' or spaces")


def exists(name: str) -> bool:
    with _netlink() as ipr:
        return bool(ipr.link_lookup(ifname=name))


def kind(name: str) -> str | None:
    """The link kind (``bridge``, ``tun``, ``veth``...), None if no such interface."""
    with _netlink() as ipr:
        idx = ipr.link_lookup(ifname=name)
        if not idx:
            return None
        info = ipr.get_links(idx[0])[0].get_attr("IFLA_LINKINFO")
        return info.get_attr("IFLA_INFO_KIND") if info is not None else "device"


def subnets_in_use() -> list[tuple[str, ipaddress.IPv4Network]]:
    """(interface, subnet) for every IPv4 address in this namespace."""
    out = []
    with _netlink() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr(family=2):
            net = ipaddress.IPv4Network(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}", strict=False)
            out.append((names.get(a["index"], "?"), net))
    return out


def create(name: str, address: ipaddress.IPv4Interface | None = None, mac: str | None = None,
           stp: bool = False, delay: int = 0) -> None:
    """Create bridge ``name`` (refused if the name is taken), give it
    ``address``, bring it up; on any failure nothing is left behind."""
    check_name(name)
    with _netlink() as ipr:
        if ipr.link_lookup(ifname=name):
            raise HostNetworkError(f"bridge name '{name}' is already in use by an interface")
        extra = {"address": mac} if mac else {}
        try:
            ipr.link("add", ifname=name, kind="bridge", br_stp_state=int(stp), br_forward_delay=delay * 100,
                     **extra)
        except NetlinkError as e:
            if e.code == 17:
                raise HostNetworkError(f"bridge name '{name}' is already in use by an interface") from None
            raise HostNetworkError(f"cannot create bridge '{name}': {e.args[1]}") from None
        try:
            idx = ipr.link_lookup(ifname=name)[0]
            if address is not None:
                ipr.addr("add", index=idx, address=str(address.ip), prefixlen=address.network.prefixlen,
                         broadcast=str(address.network.broadcast_address))
            ipr.link("set", index=idx, state="up")
        except NetlinkError as e:
            _delete(ipr, name)
            raise HostNetworkError(f"cannot set up bridge '{name}' ({address}): {e.args[1]}") from None
        except BaseException:
            _delete(ipr, name)
            raise


def _delete(ipr: IPRoute, name: str) -> bool:
    idx = ipr.link_lookup(ifname=name)
    if not idx:
        return False
    try:
        ipr.link("del", index=idx[0])
    except NetlinkError as e:
        if e.code == 19:                       # ENODEV: gone meanwhile
            return False
        raise HostNetworkError(f"cannot delete interface '{name}': {e.args[1]}") from None
    return True


def delete(name: str) -> bool:
    """Delete interface ``name``; False if there was none."""
    with _netlink() as ipr:
        return _delete(ipr, name)


def add_port(bridge: str, port: str) -> None:
    """Make ``port`` (a tap) a port of ``bridge`` and bring it up."""
    with _netlink() as ipr:
        br, dev = ipr.link_lookup(ifname=bridge), ipr.link_lookup(ifname=port)
        if not br:
            raise HostNetworkError(f"no bridge named '{bridge}'")
        if not dev:
            raise HostNetworkError(f"no interface named '{port}'")
        try:
            ipr.link("set", index=dev[0], master=br[0], state="up")
        except NetlinkError as e:
            raise HostNetworkError(f"cannot add '{port}' to bridge '{bridge}': {e.args[1]}") from None


def ports(bridge: str) -> list[str]:
    """Names of the interfaces attached to ``bridge``."""
    with _netlink() as ipr:
        br = ipr.link_lookup(ifname=bridge)
        if not br:
            return []
        return sorted(link.get_attr("IFLA_IFNAME") for link in ipr.get_links()
                      if link.get_attr("IFLA_MASTER") == br[0])
