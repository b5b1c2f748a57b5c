"""A virtual network definition as data: the subset of libvirt's
``<network>`` schema kvmkit sets up — a bridge with one IPv4 subnet, DHCP
(ranges and static hosts) and DNS from dnsmasq, and a forward mode: ``nat``
(masquerade to whatever the host routes through), ``route`` (plain
forwarding) or ``isolated`` (no ``<forward>``: guests and host only).

Values libvirt fills in when a document leaves them out are filled in at
parse time (a UUID, a free ``virbrN`` bridge name), so the stored definition
is complete and ``net-dumpxml`` shows the same thing every time.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass

from kvmkit.host.dnsmasq import DnsmasqConfig, StaticHost


@dataclass(frozen=True)
class DhcpRange:
    start: ipaddress.IPv4Address
    end: ipaddress.IPv4Address


@dataclass(frozen=True)
class NetworkDef:
    name: str
    uuid: str
    bridge: str
    forward: str = "isolated"                 # nat | route | isolated
    address: ipaddress.IPv4Interface | None = None   # the bridge's (gateway's) address and subnet
    ranges: tuple[DhcpRange, ...] = ()
    hosts: tuple[StaticHost, ...] = ()
    domain: str | None = None
    mac: str | None = None                    # the bridge's MAC
    stp: bool = True                          # libvirt's defaults: STP on, no forward delay
    delay: int = 0

    def replace(self, **changes) -> "NetworkDef":
        return dataclasses.replace(self, **changes)

    @property
    def dhcp(self) -> bool:
        return bool(self.ranges or self.hosts)

    def dnsmasq_config(self) -> DnsmasqConfig | None:
        """What dnsmasq serves (None without an address: nothing to serve on)."""
        if self.address is None:
            return None
        return DnsmasqConfig(self.bridge, self.address, tuple((r.start, r.end) for r in self.ranges),
                             self.hosts, self.domain, gateway=self.forward != "isolated")
