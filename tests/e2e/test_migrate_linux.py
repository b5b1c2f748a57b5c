"""The fast Linux guest at its shell, live-migrated between two network
namespaces acting as hosts while a TCP connection from the guest keeps
moving data.

Four namespaces: a switch (a bridge), hosts A and B (each a bridge with a
persistent tap and an uplink to the switch, and the host's address on the
bridge), and a peer S on the switch that the guest streams numbered lines
to over one TCP connection.  The source ``kvmkit run`` runs in A, the
destination ``kvmkit run --incoming tcp:B:PORT`` in B; ``kvmkit migrate``
moves the guest while it sends.  The peer then sees the same connection
continue, every number once and in order, and the guest's shell answers
on the destination's console.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "devices"))
from helpers import in_netns, sh  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.kvm, pytest.mark.userspace]
BOOT_TIMEOUT = float(os.environ.get("KVMKIT_BOOT_TIMEOUT", "900"))
PROMPT = re.compile(rb"root@kvmkit:~# ")
NET, PEER, GUEST, HOST_A, HOST_B = "10.77.9", "10.77.9.1", "10.77.9.2", "10.77.9.11", "10.77.9.12"
KVMKIT = [sys.executable, "-m", "kvmkit.cli.main"]


class Serial:
    """A client of a ``--serial unix:PATH`` console: collects output, expects."""

    def __init__(self, path: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(str(path))
                break
            except OSError:
                self.sock.close()
                assert time.monotonic() < deadline, f"no console on {path}"
                time.sleep(0.1)
        self.out = bytearray()
        self.pos = 0
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while data := self.sock.recv(65536):
            with self.cond:
                self.out += data
                self.cond.notify_all()

    def expect(self, rx: re.Pattern, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (m := rx.search(self.out, self.pos)):
                left = deadline - time.monotonic()
                assert left > 0, f"never saw {rx.pattern!r}; console ends: {bytes(self.out[-400:])!r}"
                self.cond.wait(left)
            self.pos = m.end()

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())


class Peer:
    """The guest's TCP peer in namespace S: one connection, numbered lines."""

    def __init__(self, netns: str) -> None:
        self.numbers: list[int] = []
        self.connections = 0
        self.ready = threading.Event()
        self.thread = threading.Thread(target=in_netns, args=(netns, self._serve), daemon=True)
        self.thread.start()
        self.ready.wait(10)

    def _serve(self) -> None:
        srv = socket.create_server((PEER, 5000))
        srv.settimeout(BOOT_TIMEOUT)
        self.ready.set()
        conn, _ = srv.accept()
        self.connections += 1
        buf = b""
        while data := conn.recv(4096):
            buf += data
            *lines, buf = buf.split(b"\n")
            self.numbers += [int(x) for x in lines if x.strip()]

    def wait_for(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(self.numbers) < n:
            assert time.monotonic() < deadline, f"only {len(self.numbers)} lines arrived"
            time.sleep(0.1)


@pytest.fixture
def hosts():
    tag = f"{os.getpid() % 100000}"
    ns = {k: f"kvmkit-m{k}{tag}" for k in ("sw", "a", "b", "s")}
    try:
        for n in ns.values():
            sh("ip", "netns", "add", n)
            sh("ip", "-n", n, "link", "set", "lo", "up")
        sh("ip", "-n", ns["sw"], "link", "add", "sw", "type", "bridge")
        sh("ip", "-n", ns["sw"], "link", "set", "sw", "up")
        for k, addr in (("a", HOST_A), ("b", HOST_B), ("s", PEER)):
            sh("ip", "-n", ns["sw"], "link", "add", f"p{k}", "type", "veth", "peer", "name", "uplink", "netns", ns[k])
            sh("ip", "-n", ns["sw"], "link", "set", f"p{k}", "master", "sw", "up")
            if k == "s":
                sh("ip", "-n", ns[k], "addr", "add", f"{addr}/24", "dev", "uplink")
                sh("ip", "-n", ns[k], "link", "set", "uplink", "up")
                continue
            sh("ip", "-n", ns[k], "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", ns[k], "link", "set", "uplink", "master", "br0", "up")
            sh("ip", "-n", ns[k], "tuntap", "add", "dev", "kvt0", "mode", "tap")
            sh("ip", "-n", ns[k], "link", "set", "kvt0", "master", "br0", "up")
            sh("ip", "-n", ns[k], "addr", "add", f"{addr}/24", "dev", "br0")
            sh("ip", "-n", ns[k], "link", "set", "br0", "up")
        yield ns
    finally:
        for n in ns.values():
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def test_linux_guest_migrates_between_hosts_with_tcp_moving(hosts, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))
    procs = []

    def spawn(netns: str, *args: str) -> subprocess.Popen:
        p = subprocess.Popen(["ip", "netns", "exec", netns, *KVMKIT, "run", *args], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        return p

    try:
        peer = Peer(hosts["s"])
        src = spawn(hosts["a"], "--net", "tap=kvt0,mac=52:54:00:77:09:02", "--serial", f"unix:{tmp_path}/a.ser",
                    "--qmp", f"unix:{tmp_path}/a.qmp,server,wait=off")
        con = Serial(tmp_path / "a.ser", timeout=120)
        con.expect(PROMPT, BOOT_TIMEOUT)
        con.send(f"ip addr add {GUEST}/24 dev eth0 && ip link set eth0 up\n")
        con.expect(PROMPT, 120)
        con.send(f"i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done | nc {PEER} 5000 &\n")
        peer.wait_for(20)
        dst = spawn(hosts["b"], "--incoming", f"tcp:{HOST_B}:4444", "--serial", f"unix:{tmp_path}/b.ser",
                    "--qmp", f"unix:{tmp_path}/b.qmp,server,wait=off")
        assert "waiting for an incoming migration" in dst.stderr.readline()
        r = subprocess.run([*KVMKIT, "migrate", "--qmp", f"{tmp_path}/a.qmp", "--max-bandwidth", "1G",
                            f"tcp:{HOST_B}:4444"], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        moved = len(peer.numbers)
        status = subprocess.run([*KVMKIT, "qmp", f"{tmp_path}/a.qmp", "query-status"], env=env,
                                capture_output=True, text=True).stdout
        assert '"postmigrate"' in status
        peer.wait_for(moved + 30)                   # the same connection keeps moving, from host B
        assert peer.connections == 1
        assert peer.numbers == list(range(len(peer.numbers))), "a line was lost or repeated"
        dcon = Serial(tmp_path / "b.ser")
        dcon.send("echo migrated-$((6*7))\n")
        dcon.expect(re.compile(rb"migrated-42"), 120)
        print(r.stdout.strip())
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
