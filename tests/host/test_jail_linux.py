"""A jailed VMM runs the fast Linux guest normally: disks (raw, and a qcow2
overlay whose backing file must be in the jail too), a NIC on a tap in a
test network namespace (ping both ways), virtio-rng, -console, -balloon and
-vsock, QMP from outside the jail, and a clean power-off — all under the
seccomp filter, which kills the VMM on any syscall off its list."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.userspace, pytest.mark.kvm]

KVMKIT = [sys.executable, "-m", "kvmkit.cli.main"]
HOST_IP, GUEST_IP = "10.77.9.1", "10.77.9.2"
MB = 1 << 20
PATTERN = bytes(range(256)) * (MB // 256)
SCRIPT = f"""
set -e
head -c 1048576 /dev/vda | sha256sum
head -c 1048576 /dev/vdb | sha256sum
echo jailed-write | dd of=/dev/vdc bs=512 seek=8 conv=fsync 2>/dev/null
ip addr add {GUEST_IP}/24 dev eth0 && ip link set eth0 up
ping -c 2 -W 20 {HOST_IP}
echo hwrng $(head -c 64 /dev/hwrng | wc -c)
echo hvc0-hello > /dev/hvc0
echo ready-for-host
sleep 30
"""


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def wait_for(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def qmp(path: str, *commands: tuple[str, dict]) -> list:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(60)
        s.connect(path)
        f = s.makefile("rwb")
        f.readline()
        out = []
        for name, arguments in (("qmp_capabilities", {}),) + commands:
            f.write(json.dumps({"execute": name, "arguments": arguments}).encode() + b"\n")
            f.flush()
            while True:
                reply = json.loads(f.readline())
                if "event" not in reply:
                    break
            out.append(reply)
        return out[1:]


@pytest.fixture(scope="module")
def jailed_run(tmp_path_factory):
    from kvmkit.guest.assets import fast_guest
    g = fast_guest(build=True, progress=False)
    tmp = tmp_path_factory.mktemp("jail")
    (tmp / "ro.raw").write_bytes(PATTERN + bytes(15 * MB))
    (tmp / "base.raw").write_bytes(PATTERN[::-1] + bytes(15 * MB))
    sh("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw", str(tmp / "top.qcow2"))
    with open(tmp / "rw.raw", "wb") as f:
        f.truncate(16 * MB)
    netns, tap = f"kvj{os.getpid()}", f"kvj{os.getpid()}"[:15]
    sh("ip", "netns", "add", netns)
    cmdline = f"{g.cmdline} kvmkit.run=b64:{base64.b64encode(SCRIPT.encode()).decode()}"
    paths = {k: str(tmp / k) for k in ("console.log", "qmp.sock", "exit.json", "v.sock", "hvc0.out")}
    argv = ["ip", "netns", "exec", netns, *KVMKIT, "run", "--isolation", "on", "--kernel", str(g.vmlinux),
            "--initrd", str(g.initrd), "--cmdline", cmdline, "-m", g.memory,
            "--serial", f"file:{paths['console.log']}", "--qmp", f"unix:{paths['qmp.sock']},server,wait=off",
            "--exit-file", paths["exit.json"], "--disk", f"path={tmp / 'ro.raw'},readonly=on",
            "--disk", f"path={tmp / 'top.qcow2'},format=qcow2", "--disk", f"path={tmp / 'rw.raw'}",
            "--net", f"tap={tap}", "--rng", "--balloon", "--vsock", f"cid=7,uds={paths['v.sock']}",
            "--console", f"virtio,out={paths['hvc0.out']}"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        def tap_exists() -> bool:
            r = subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "show", tap], capture_output=True)
            return r.returncode == 0
        wait_for(lambda: tap_exists() or proc.poll() is not None, 120, "the tap")
        sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"{HOST_IP}/24", "dev", tap)
        sh("ip", "netns", "exec", netns, "ip", "link", "set", tap, "up")
        log = tmp / "console.log"
        wait_for(lambda: b"ready-for-host" in log.read_bytes() or proc.poll() is not None, 900, "the guest script")
        results = {"uid": os.stat(tmp / "rw.raw").st_uid,          # the VM's own, while it runs
                   "qmp": qmp(paths["qmp.sock"], ("query-status", {}), ("balloon", {"value": 96 * MB}),
                              ("query-balloon", {}))}
        ping = subprocess.run(["ip", "netns", "exec", netns, "ping", "-c", "2", "-w", "30", GUEST_IP],
                              capture_output=True, text=True)
        results["ping"] = ping.returncode
        out, err = proc.communicate(timeout=300)
        yield {"tmp": tmp, "status": proc.returncode, "stderr": err.decode(), "log": log.read_text("latin-1"),
               "paths": paths, **results}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def test_guest_script_ran_and_powered_off_cleanly(jailed_run):
    r = jailed_run
    assert r["status"] == 0, (r["stderr"][-2000:], r["log"][-2000:])
    assert "killed by seccomp" not in r["stderr"]
    assert "kvmkit-guest: run exit=0" in r["log"], r["log"][-2000:]
    assert json.loads(open(r["paths"]["exit.json"]).read())["status"] == 0


def test_disks_read_and_written_through_the_jail(jailed_run):
    import hashlib
    log = jailed_run["log"]
    assert hashlib.sha256(PATTERN).hexdigest() in log                 # read-only raw
    assert hashlib.sha256(PATTERN[::-1]).hexdigest() in log           # qcow2 overlay -> backing file
    data = (jailed_run["tmp"] / "rw.raw").read_bytes()
    assert data[8 * 512:8 * 512 + 12] == b"jailed-write"
    st = os.stat(jailed_run["tmp"] / "rw.raw")
    assert (st.st_uid, st.st_gid) == (0, 0), "the disk's owner is restored after the run"


def test_network_both_ways_and_the_other_devices(jailed_run):
    log = jailed_run["log"]
    assert "2 packets transmitted, 2 packets received" in log, log[-2000:]
    assert jailed_run["ping"] == 0
    assert "hwrng 64" in log
    assert (jailed_run["tmp"] / "hvc0.out").read_bytes().count(b"hvc0-hello") == 1
    status, balloon_set, balloon = jailed_run["qmp"]
    assert status["return"]["status"] == "running"
    assert "return" in balloon_set and "actual" in balloon["return"]


def test_nothing_left_behind(jailed_run):
    from kvmkit.host import ids
    from kvmkit.host.jail import jail_dir
    uid = jailed_run["uid"]
    assert uid >= ids.DEFAULT_BASE
    for key in ("qmp.sock", "v.sock"):
        assert not os.path.lexists(jailed_run["paths"][key])
    assert not (jail_dir() / str(uid)).exists()
    ids.allocate(ids.IdRange(uid, 1)).release()          # the uid is free again
