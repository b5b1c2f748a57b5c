"""DHCP and DNS for one network: a dnsmasq (Debian's ``dnsmasq-base``) of
its own, with its configuration, pid file and lease file in the network's
state directory, as libvirt runs one per network.

dnsmasq binds only to its bridge (``bind-dynamic``, ``except-interface=lo``),
so any number of them — and a host resolver — coexist.  Starting waits for
dnsmasq's own verdict: it daemonizes only after its sockets and lease file
are set up, and a configuration or socket error is its exit status and one
line on stderr, which is passed on.  The pid file is checked against
``/proc`` (the process must be a dnsmasq reading *this* configuration)
before anything signals it, so a recycled pid is never killed.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from kvmkit.host.errors import HostNetworkError

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class StaticHost:
    mac: str
    ip: ipaddress.IPv4Address
    name: str | None = None


@dataclass(frozen=True)
class DnsmasqConfig:
    bridge: str
    address: ipaddress.IPv4Interface        # the bridge's own address and subnet
    ranges: tuple[tuple[ipaddress.IPv4Address, ipaddress.IPv4Address], ...] = ()
    hosts: tuple[StaticHost, ...] = ()
    domain: str | None = None
    gateway: bool = True                    # False (isolated): no default route offered


@dataclass(frozen=True)
class Lease:
    expiry: int                             # seconds since the epoch (0: never)
    mac: str
    ip: str
    hostname: str | None
    client_id: str | None


@dataclass(frozen=True)
class Files:
    """Where one network's dnsmasq keeps its files."""

    dir: Path

    @property
    def conf(self) -> Path:
        return self.dir / "dnsmasq.conf"

    @property
    def pid(self) -> Path:
        return self.dir / "dnsmasq.pid"

    @property
    def leases(self) -> Path:
        return self.dir / "dnsmasq.leases"


def conf_text(cfg: DnsmasqConfig, f: Files) -> str:
    net = cfg.address.network
    lines = ["# written by kvmkit: changes are overwritten at the next net-start",
             "strict-order", f"pid-file={f.pid}", "except-interface=lo", "bind-dynamic",
             f"interface={cfg.bridge}", f"listen-address={cfg.address.ip}", "no-hosts"]
    if cfg.domain:
        lines += [f"domain={cfg.domain}", "expand-hosts", f"local=/{cfg.domain}/"]
    # static hosts' names resolve before they have a lease; in the configuration,
    # which dnsmasq reads before it drops root (a hosts file is read after)
    for h in cfg.hosts:
        if h.name:
            names = [h.name] + ([f"{h.name}.{cfg.domain}"] if cfg.domain else [])
            lines.append(f"host-record={','.join(names)},{h.ip}")
    if cfg.ranges or cfg.hosts:
        for start, end in cfg.ranges:
            lines.append(f"dhcp-range={start},{end},{net.netmask}")
        if not cfg.ranges:                  # static hosts only: dnsmasq still needs the subnet
            lines.append(f"dhcp-range={net.network_address},static,{net.netmask}")
        size = sum(int(e) - int(s) + 1 for s, e in cfg.ranges) + len(cfg.hosts)
        lines += ["dhcp-no-override", "dhcp-authoritative", f"dhcp-lease-max={size}",
                  f"dhcp-leasefile={f.leases}"]
        lines += [f"dhcp-host={h.mac},{h.ip}" + (f",{h.name}" if h.name else "") for h in cfg.hosts]
        if not cfg.gateway:
            lines.append("dhcp-option=3")   # no router: an isolated network leads nowhere
    return "\n".join(lines) + "\n"


def find() -> str:
    exe = shutil.which("dnsmasq")
    if exe is None:
        raise HostNetworkError("dnsmasq not found in PATH: DHCP and DNS need it "
                               "(install Debian's dnsmasq-base)")
    return exe


def start(cfg: DnsmasqConfig, f: Files) -> int:
    """Write the configuration and start dnsmasq; its pid.  Raises with
    dnsmasq's own message if it refuses or dies at once; nothing is left
    running then."""
    exe = find()
    f.dir.mkdir(parents=True, exist_ok=True)
    for stale in (f.pid,):
        stale.unlink(missing_ok=True)
    f.leases.touch(mode=0o644)
    f.conf.write_text(conf_text(cfg, f))
    try:
        res = subprocess.run([exe, f"--conf-file={f.conf}"], capture_output=True, text=True,
                             timeout=START_TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        stop(f)
        raise HostNetworkError(f"dnsmasq did not start within {START_TIMEOUT:g}s") from None
    except OSError as e:
        raise HostNetworkError(f"cannot run {exe}: {e.strerror}") from None
    if res.returncode != 0:
        stop(f)
        raise HostNetworkError(f"dnsmasq failed to start (exit status {res.returncode}): "
                               f"{_message(res.stderr)}")
    pid = running(f)
    if pid is None:
        deadline = time.monotonic() + 2.0     # the daemon writes its pid file just after the parent exits
        while pid is None and time.monotonic() < deadline:
            time.sleep(0.02)
            pid = running(f)
    if pid is None:
        raise HostNetworkError(f"dnsmasq exited right after starting (no live process in {f.pid}); "
                               f"{_message(res.stderr)}")
    return pid


def running(f: Files) -> int | None:
    """The pid of this network's live dnsmasq, or None."""
    try:
        pid = int(f.pid.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":
        return None
    if not any(a.endswith(b"dnsmasq") for a in cmdline[:1]) or f"--conf-file={f.conf}".encode() not in cmdline:
        return None
    return pid


def stop(f: Files, timeout: float = STOP_TIMEOUT) -> bool:
    """SIGTERM this network's dnsmasq and wait for it to go; False if none ran."""
    pid = running(f)
    if pid is None:
        f.pid.unlink(missing_ok=True)
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait
        while running(f) == pid and time.monotonic() < deadline:
            time.sleep(0.02)
        if running(f) != pid:
            break
    else:
        raise HostNetworkError(f"dnsmasq (pid {pid}) did not stop")
    f.pid.unlink(missing_ok=True)
    return True


def leases(f: Files) -> list[Lease]:
    """The lease file's entries (``expiry mac ip hostname client-id``)."""
    try:
        text = f.leases.read_text()
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 4 or not parts[0].isdigit() or parts[0] == "duid":
            continue
        star = lambda s: None if s == "*" else s  # noqa: E731
        out.append(Lease(int(parts[0]), parts[1].lower(), parts[2], star(parts[3]),
                         star(parts[4]) if len(parts) > 4 else None))
    return out


def _message(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    return " / ".join(lines[-2:]) if lines else "(no message)"
