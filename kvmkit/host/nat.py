"""A network's firewall: one nftables table per bridge, written as a whole
ruleset and loaded with ``nft -f -``.

Why ``nft`` and not netlink: pyroute2's nftables support cannot yet build
NAT chains and masquerade expressions, and ``nft -f`` loads a whole file in
one kernel transaction — the table is there complete or not at all, which is
exactly the "nothing half set up" rule.  Tearing down is one ``delete
table``.  Each network owns its own table, so networks never edit each
other's rules, and rules match on the bridge's name and subnet only.

Modes (libvirt's ``<forward mode>``): ``nat`` masquerades the subnet's
traffic leaving by any other interface and lets replies back in; ``route``
forwards both ways without NAT; ``isolated`` (no ``<forward>``) rejects
anything routed into or out of the bridge, guests still reach each other
and the host.
"""

from __future__ import annotations

import ipaddress
import re
import shutil
import subprocess
from pathlib import Path

from kvmkit.host.errors import HostNetworkError

MODES = ("nat", "route", "isolated")
FORWARDING = Path("/proc/sys/net/ipv4/ip_forward")


def table_name(bridge: str) -> str:
    """``kvmkit_<bridge>``, with characters nft identifiers lack replaced."""
    return "kvmkit_" + re.sub(r"[^A-Za-z0-9_]", "_", bridge)


def ruleset(bridge: str, subnet: ipaddress.IPv4Network, mode: str) -> str:
    """The ``nft -f`` text that creates this network's table."""
    if mode not in MODES:
        raise HostNetworkError(f"unknown forward mode {mode!r} (known: {', '.join(MODES)})")
    t, br, net = table_name(bridge), f'"{bridge}"', str(subnet)
    if mode == "isolated":
        forward = [f"iifname {br} oifname {br} accept",
                   f"iifname {br} reject", f"oifname {br} reject"]
    else:
        back = "" if mode == "route" else " ct state established,related"
        forward = [f"iifname {br} oifname {br} accept",
                   f"iifname {br} ip saddr {net} accept",
                   f"oifname {br} ip daddr {net}{back} accept",
                   f"iifname {br} reject", f"oifname {br} reject"]
    lines = [f"table ip {t} {{",
             "  chain forward {", "    type filter hook forward priority filter; policy accept;",
             *(f"    {rule}" for rule in forward), "  }"]
    if mode == "nat":
        # multicast and broadcast stay local; everything else leaving the subnet is masqueraded
        lines += ["  chain postrouting {", "    type nat hook postrouting priority srcnat; policy accept;",
                  f"    ip saddr {net} ip daddr 224.0.0.0/24 return",
                  f"    ip saddr {net} ip daddr 255.255.255.255 return",
                  f"    ip saddr {net} ip daddr != {net} masquerade", "  }"]
    lines.append("}")
    return "\n".join(lines) + "\n"


def _nft(args: list[str], text: str | None = None) -> subprocess.CompletedProcess:
    exe = shutil.which("nft")
    if exe is None:
        raise HostNetworkError("nft not found in PATH (install Debian's nftables)")
    try:
        return subprocess.run([exe, *args], input=text, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise HostNetworkError(f"cannot run nft: {e}") from None


def install(bridge: str, subnet: ipaddress.IPv4Network, mode: str) -> str:
    """Load the table (refused if it exists: another network owns it); its name."""
    t = table_name(bridge)
    if table_exists(bridge):
        raise HostNetworkError(f"nftables table 'ip {t}' already exists (left by another network?)")
    res = _nft(["-f", "-"], ruleset(bridge, subnet, mode))
    if res.returncode != 0:
        raise HostNetworkError(f"nft could not load table 'ip {t}': {_first_error(res.stderr)}")
    return t


def remove(bridge: str) -> bool:
    """Delete the bridge's table; False if there was none."""
    if not table_exists(bridge):
        return False
    res = _nft(["delete", "table", "ip", table_name(bridge)])
    if res.returncode != 0:
        raise HostNetworkError(f"nft could not delete table 'ip {table_name(bridge)}': "
                               f"{_first_error(res.stderr)}")
    return True


def table_exists(bridge: str) -> bool:
    res = _nft(["list", "table", "ip", table_name(bridge)])
    return res.returncode == 0


def tables() -> list[str]:
    """Every ``ip`` table in this namespace (for tests and checks)."""
    res = _nft(["list", "tables", "ip"])
    return [ln.split()[-1] for ln in res.stdout.splitlines() if ln.startswith("table ip ")]


def enable_forwarding() -> None:
    """IPv4 forwarding on, as libvirt turns it on for NAT and routed networks
    (in this network namespace only)."""
    try:
        if FORWARDING.read_text().strip() != "1":
            FORWARDING.write_text("1\n")
    except OSError as e:
        raise HostNetworkError(f"cannot enable IPv4 forwarding ({FORWARDING}): {e.strerror}") from None


def _first_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return lines[0] if lines else "(no message)"
