"""``virsh console``: the terminal joined to a running domain's serial port
(its unix socket) until ``Ctrl-]``; the VM keeps running, and any number of
attach/detach cycles may follow.  One session at a time, as virsh allows.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import termios
import tty

from kvmkit.manager.errors import OperationFailed
from kvmkit.manager.locks import try_lock
from kvmkit.manager.sockpath import short_path

ESCAPE = 0x1D            # Ctrl-]


def attach(host, name: str, force: bool = False) -> None:
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    if not os.isatty(stdin):
        raise OperationFailed("Cannot run interactive console without a controlling TTY")
    sock_path, lock_path = host.console(name)
    lock = try_lock(lock_path, wait=0)
    if lock is None:
        raise OperationFailed("Active console session exists for this domain")
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with short_path(sock_path) as path:
            try:
                sock.connect(path)
            except OSError as e:
                raise OperationFailed(f"cannot connect to the console of '{name}': {e.strerror}") from None
        saved = termios.tcgetattr(stdin)
        try:
            # Raw before the banner: whoever waits for it may type at once,
            # and a line-buffered terminal would hold (and echo) those keys.
            tty.setraw(stdin)
            os.write(stdout, f"Connected to domain '{name}'\r\nEscape character is ^] (Ctrl + ])\r\n".encode())
            _relay(sock, stdin, stdout)
        finally:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
            sock.close()
    finally:
        os.close(lock)


def _relay(sock: socket.socket, stdin: int, stdout: int) -> None:
    while True:
        ready, _, _ = select.select([sock, stdin], [], [])
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                return                        # the VM ended
            os.write(stdout, data)
        if stdin in ready:
            data = os.read(stdin, 4096)
            if not data:
                return
            cut = data.find(bytes([ESCAPE]))
            if cut >= 0:
                if cut:
                    sock.sendall(data[:cut])
                return
            sock.sendall(data)
