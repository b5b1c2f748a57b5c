"""``kvmkit run --isolation on --incoming URI``: the supervisor is the end
the source reaches.  A jailed VMM listens inside an empty network namespace
(no tcp: source could reach it) and cannot know before the stream arrives
which kernel, disks and taps its jail must hold.  So the supervisor listens
(tcp: in the host's namespace, unix: at the path asked for), accepts the
source, reads the stream's CONFIG section without consuming it
(``MSG_PEEK``; a file is read and rewound), builds the jail for that
machine, and hands the connection to the VMM as ``--incoming fd:N``, which
reads the whole stream and answers the source on it as usual."""

from __future__ import annotations

import argparse
import io
import os
import socket
import sys
import time

from kvmkit.errors import ConfigError

PEEK_TIMEOUT = 30.0


def accept(args: argparse.Namespace):
    """Wait for the source; returns the stream's VmConfig and points
    ``args.incoming`` at the handed-over descriptor."""
    from kvmkit.cli.run import check_restore_options
    from kvmkit.vmm.migration.transport import Incoming, parse_uri
    check_restore_options(args, "--incoming", "migration stream")
    uri = parse_uri(args.incoming)
    if uri.scheme == "exec":
        raise ConfigError("--isolation on: --incoming exec: would run a command inside the jail, which has no "
                          "shell; use file:, unix: or tcp: (or --isolation off)")
    if uri.scheme == "fd":
        raise ConfigError("--isolation on: --incoming fd: is what the supervisor hands its VMM; give file:, "
                          "unix: or tcp:")
    if uri.scheme == "file":
        try:
            fd = os.open(uri.target, os.O_RDONLY | os.O_CLOEXEC)
            source = os.pread(fd, 1 << 20, 0)
        except OSError as exc:
            raise ConfigError(f"--incoming {uri}: {exc.strerror}") from None
    else:
        incoming = Incoming(uri)
        where = f"tcp port {incoming.port}" if incoming.port else args.incoming
        print(f"kvmkit: waiting for an incoming migration on {where}", file=sys.stderr, flush=True)
        conn, _ = incoming._listener.accept()
        incoming.close()                           # the listener (and a unix path): one source only
        source = _peek_config(conn, str(uri))
        fd = conn.detach()
    os.set_inheritable(fd, True)
    args.incoming = f"fd:{fd}"
    return _config(source, str(uri))


def _peek_config(conn: socket.socket, where: str) -> bytes:
    """The stream's header and CONFIG section, left unread in the socket."""
    from kvmkit.vmm.migration import stream as st
    conn.settimeout(PEEK_TIMEOUT)
    deadline = time.monotonic() + PEEK_TIMEOUT
    want = len(st.MAGIC) + 4 + st._HEAD.size
    sized = False
    try:
        while True:
            head = conn.recv(want, socket.MSG_PEEK)
            if len(head) >= want:
                if sized:
                    return head
                _, _, _, length = st._HEAD.unpack_from(head, len(st.MAGIC) + 4)
                want += min(length, st.MAX_SECTION) + st._CRC.size
                sized = True
                continue
            if not head or time.monotonic() > deadline:
                return head                          # short: the reader below says what is missing
            time.sleep(0.005)                        # a peek returns at once with what has arrived
    except socket.timeout:
        raise ConfigError(f"--incoming {where}: the source sent no stream in {PEEK_TIMEOUT:g} s") from None
    except OSError as exc:
        raise ConfigError(f"--incoming {where}: {exc.strerror or exc}") from None
    finally:
        conn.settimeout(None)


def _config(head: bytes, where: str):
    from kvmkit.vmm.migration import stream as st
    from kvmkit.vmm.snapshot import config_from_record
    try:
        reader = st.StreamReader(io.BytesIO(head), where)
        rec = reader.decode(reader.expect(st.CONFIG))
        return config_from_record(rec["config"], rec["host-compat"])
    except (st.StreamError, KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"--incoming {where}: {exc}") from None
