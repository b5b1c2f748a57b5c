"""Network namespaces for tests: an "inside" namespace where the manager,
dnsmasq and VMMs run (their bridges, taps and nftables tables live only
there), connected by a veth pair to an "outside" namespace that plays the
world beyond the host's uplink.  Nothing has a route to anything but
loopback and these two namespaces; both go when the test ends.

    inside  [uplink 198.51.100.1/24] ===veth=== [world 198.51.100.2/24]  outside
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

from pyroute2 import IPRoute, netns

CLONE_NEWNET = 0x40000000
UPLINK_IP, WORLD_IP, PREFIX = "198.51.100.1", "198.51.100.2", 24     # TEST-NET-2
_libc = ctypes.CDLL(None, use_errno=True)


def setns_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {path}")
    finally:
        os.close(fd)


class NetLab:
    def __init__(self, tag: str = "t") -> None:
        base = f"kvmkit-{tag}-{os.getpid()}-{os.urandom(2).hex()}"
        self.inside, self.outside = f"{base}-in", f"{base}-out"
        netns.create(self.inside)
        try:
            netns.create(self.outside)
            with self.entered():
                with IPRoute() as ipr:
                    ipr.link("add", ifname="uplink", kind="veth", peer="world")
                    world = ipr.link_lookup(ifname="world")[0]
                    ipr.link("set", index=world, net_ns_fd=self.outside)
                    up = ipr.link_lookup(ifname="uplink")[0]
                    ipr.addr("add", index=up, address=UPLINK_IP, prefixlen=PREFIX)
                    ipr.link("set", index=up, state="up")
                    ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            with self.entered(self.outside):
                with IPRoute() as ipr:
                    w = ipr.link_lookup(ifname="world")[0]
                    ipr.addr("add", index=w, address=WORLD_IP, prefixlen=PREFIX)
                    ipr.link("set", index=w, state="up")
                    ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        except BaseException:
            self.close()
            raise

    def path(self, which: str | None = None) -> str:
        return f"/var/run/netns/{which or self.inside}"

    @contextlib.contextmanager
    def entered(self, which: str | None = None) -> Iterator[None]:
        """This thread runs in the namespace for the block (children inherit it)."""
        saved = os.open(f"/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns_path(self.path(which))
            yield
        finally:
            if _libc.setns(saved, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back")
            os.close(saved)

    def run(self, argv: list[str], which: str | None = None, **kw) -> subprocess.CompletedProcess:
        """A command run inside the namespace."""
        p = self.path(which)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 300)
        return subprocess.run(argv, preexec_fn=lambda: setns_path(p), **kw)

    def links(self, which: str | None = None) -> dict[str, str]:
        """{name: kind} of the namespace's interfaces."""
        with self.entered(which), IPRoute() as ipr:
            out = {}
            for link in ipr.get_links():
                info = link.get_attr("IFLA_LINKINFO")
                out[link.get_attr("IFLA_IFNAME")] = info.get_attr("IFLA_INFO_KIND") if info else "device"
            return out

    def nft_tables(self) -> list[str]:
        res = self.run(["nft", "list", "tables"])
        return [ln.split()[-1] for ln in res.stdout.splitlines() if ln.startswith("table ")]

    def tcp_listener(self, port: int) -> "Listener":
        """A TCP server in the outside namespace recording each client's address and data."""
        with self.entered(self.outside):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((WORLD_IP, port))
        s.listen(8)
        return Listener(s)

    def close(self) -> None:
        for name in (self.outside, self.inside):
            with contextlib.suppress(OSError, FileNotFoundError):
                netns.remove(name)


class Listener:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.clients: list[tuple[str, bytes]] = []
        self._t = threading.Thread(target=self._serve, daemon=True)
        self._t.start()

    def _serve(self) -> None:
        while True:
            try:
                c, addr = self.sock.accept()
            except OSError:
                return
            c.settimeout(30)
            data = b""
            with contextlib.suppress(OSError):
                while chunk := c.recv(4096):
                    data += chunk
            c.close()
            self.clients.append((addr[0], data))

    def close(self) -> None:
        self.sock.close()


def dnsmasq_processes(conf_dir: Path) -> list[int]:
    """Pids of dnsmasq processes whose configuration lives under ``conf_dir``."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmd = Path(entry.path, "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"dnsmasq") and any(str(conf_dir).encode() in a for a in cmd):
            out.append(int(entry.name))
    return out
