"""Where a QMP server listens, parsed from QEMU's chardev-style spelling.

``kvmkit run --qmp unix:PATH[,server][,wait=off]`` and ``tcp:HOST:PORT`` are
spelled the way QEMU's ``-qmp`` option spells them, so scripts written for
QEMU keep working.  The monitor can stop and reset the VM, so a TCP listener
on anything but loopback is refused unless the caller says otherwise: the
protocol has no authentication.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from kvmkit.errors import ConfigError

_FLAG_ON = {"on", "yes", "true", ""}
_FLAG_OFF = {"off", "no", "false"}


@dataclass(frozen=True)
class QmpAddress:
    """A parsed listening address.

    ``kind`` is ``"unix"`` (``path`` set) or ``"tcp"`` (``host``/``port``
    set).  ``wait`` mirrors QEMU's ``server,wait=on``: the VM should not start
    until the first client has connected.
    """

    kind: str
    path: str | None = None
    host: str | None = None
    port: int | None = None
    wait: bool = False

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def _flag(name: str, value: str, spec: str) -> bool:
    value = value.lower()
    if value in _FLAG_ON:
        return True
    if value in _FLAG_OFF:
        return False
    raise ConfigError(f"QMP address {spec!r}: option {name!r} takes on/off, not {value!r}")


def parse_qmp_address(spec: str) -> QmpAddress:
    """Parse ``unix:PATH[,opts]``, ``tcp:HOST:PORT[,opts]`` or a bare path.

    Options: ``server`` / ``server=on`` (kvmkit always listens, so this only
    changes the default of ``wait`` as in QEMU, where ``server`` alone means
    ``wait=on``), ``wait=on|off`` and the old spelling ``nowait``.
    """
    if not spec:
        raise ConfigError("QMP address is empty: use unix:PATH or tcp:HOST:PORT")
    head, *options = spec.split(",")
    server = False
    wait: bool | None = None
    for option in options:
        name, _, value = option.partition("=")
        if name == "server":
            server = _flag(name, value, spec)
        elif name == "wait":
            wait = _flag(name, value, spec)
        elif name == "nowait" and not value:
            wait = False
        else:
            raise ConfigError(f"QMP address {spec!r}: unknown option {option!r} "
                              "(known: server, wait=on|off, nowait)")
    if wait is None:
        wait = server
    if head.startswith("tcp:"):
        host, port = _split_host_port(head[4:], spec)
        return QmpAddress("tcp", host=host, port=port, wait=wait)
    if head.startswith("unix:"):
        path = head[5:]
    elif ":" in head.split("/")[0]:     # telnet:, udp:, ... (QEMU backends kvmkit lacks)
        raise ConfigError(f"QMP address {spec!r}: use unix:PATH or tcp:HOST:PORT")
    else:
        path = head
    if not path:
        raise ConfigError(f"QMP address {spec!r}: the unix socket path is empty")
    return QmpAddress("unix", path=path, wait=wait)


def _split_host_port(text: str, spec: str) -> tuple[str, int]:
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ConfigError(f"QMP address {spec!r}: expected tcp:[IPV6]:PORT")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            raise ConfigError(f"QMP address {spec!r}: expected tcp:HOST:PORT")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"QMP address {spec!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"QMP address {spec!r}: port {port} is out of range 0-65535")
    return host, port


def check_loopback(address: QmpAddress, allow_remote: bool = False) -> None:
    """Refuse a TCP listener reachable from other machines.

    QMP has no authentication and can stop, reset or quit the VM; QEMU leaves
    that to the operator, kvmkit makes the dangerous case explicit.
    """
    if address.kind != "tcp" or allow_remote:
        return
    if not address.host:
        raise ConfigError(f"QMP address {address}: an empty host listens on every interface; "
                          "use 127.0.0.1 (or allow non-loopback hosts explicitly)")
    try:
        infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ConfigError(f"QMP address {address}: cannot resolve {address.host!r}: {error}") from None
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        if not ip.is_loopback:
            raise ConfigError(f"QMP address {address}: {ip} is not a loopback address; QMP has no "
                              "authentication (allow non-loopback hosts explicitly to override)")
