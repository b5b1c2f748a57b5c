"""The jail, tested from inside: ``kvmkit run --isolation on`` builds the
whole jail (namespaces, pivot, uid, capabilities, seccomp) exactly as for a
VM, then runs a probe in place of the vCPUs (the position of a guest that
took over the VMM: see ``KVMKIT_JAIL_TEST_PROBE`` in kvmkit.host.jail)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from kvmkit.host import ids
from kvmkit.host.jail import ENV_TEST_PROBE, JailError, JailSpec, Bind, build, jail_dir, remove
from kvmkit.host.jail_process import spawn

pytestmark = pytest.mark.kvm

KVMKIT = [sys.executable, "-m", "kvmkit.cli.main"]
OTHER_UID = 299999                       # "another VM's" uid, never allocated by the default range


def run(*argv: str, probe: str | None = None, env: dict | None = None, timeout: float = 60, **kw):
    e = dict(os.environ)
    e.pop("KVMKIT_ISOLATION", None)
    e.update(env or {})
    if probe is not None:
        e[ENV_TEST_PROBE] = textwrap.dedent(probe)
    return subprocess.run([*KVMKIT, "run", *argv], capture_output=True, text=True, timeout=timeout, env=e, **kw)


def jailed(tiny_guest, *extra: str, probe: str | None = None, env: dict | None = None):
    return run("--isolation", "on", "--kernel", str(tiny_guest("hello")), "-m", "64M", "--serial", "null",
               *extra, probe=probe, env=env)


def probe_result(p) -> dict:
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_a_jailed_tiny_guest_ends_as_an_unjailed_one(tiny_guest, tmp_path):
    plain = run("--kernel", str(tiny_guest("serial")), "-m", "64M", "--serial", f"file:{tmp_path}/a.log")
    inside = run("--isolation", "on", "--kernel", str(tiny_guest("serial")), "-m", "64M",
                 "--serial", f"file:{tmp_path}/b.log", "--exit-file", str(tmp_path / "exit.json"))
    assert inside.returncode == plain.returncode, inside.stderr
    assert (tmp_path / "b.log").read_bytes() == (tmp_path / "a.log").read_bytes() != b""
    assert json.loads((tmp_path / "exit.json").read_text())["status"] == plain.returncode
    assert os.stat(tmp_path / "b.log").st_uid == 0


def test_the_env_variable_turns_it_on(tiny_guest):
    p = run("--kernel", str(tiny_guest("hello")), "-m", "64M", "--serial", "null",
            probe="import json, os; print(json.dumps(os.getuid()))", env={"KVMKIT_ISOLATION": "on"})
    assert probe_result(p) >= ids.DEFAULT_BASE


@pytest.fixture
def other_vm(tiny_guest, tmp_path):
    """Another jailed VM, running (the idle guest), with its own disk and QMP socket."""
    disk, sock = tmp_path / "other.raw", tmp_path / "other.sock"
    disk.write_bytes(b"secret of the other VM".ljust(1 << 20, b"\0"))
    os.chmod(disk, 0o600)
    env = dict(os.environ)
    env.pop("KVMKIT_ISOLATION", None)
    proc = subprocess.Popen([*KVMKIT, "run", "--isolation", "on", "--kernel", str(tiny_guest("idle")), "-m", "64M",
                             "--serial", "null", "--disk", f"path={disk}", "--qmp", f"unix:{sock},server,wait=off"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while True:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(sock))                         # through the link into its jail
                assert s.recv(4096).startswith(b'{"QMP"')
            break
        except OSError:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the other VM's QMP socket never answered"
            time.sleep(0.1)
    yield {"disk": disk, "sock": sock, "uid": os.stat(disk).st_uid, "proc": proc, "kernel": tiny_guest("hello")}
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)


ATTEMPT = """
import errno, json, os, socket
def attempt(f):
    try:
        f()
        return "allowed"
    except OSError as e:
        return errno.errorcode[e.errno]
"""

ESCAPE = ATTEMPT + """
r = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "root": sorted(os.listdir("/")),
     "shadow": attempt(lambda: open("/etc/shadow").read()),
     "proc": attempt(lambda: os.listdir("/proc")),
     "other_disk": attempt(lambda: open(OTHER_DISK, "rb").read(4)),
     "other_sock": attempt(lambda: socket.socket(socket.AF_UNIX).connect(OTHER_SOCK)),
     "other_jail": attempt(lambda: os.listdir(OTHER_JAIL)),
     "write_kernel": attempt(lambda: open(KERNEL, "r+b")),
     "own_disk": attempt(lambda: open(OWN_DISK, "r+b").read(4)),
}
print(json.dumps(r))
"""


def test_escaped_code_reaches_nothing_but_its_own_vm(tiny_guest, tmp_path, other_vm):
    assert other_vm["uid"] >= ids.DEFAULT_BASE, "a running VM's writable disk belongs to its uid"
    own = tmp_path / "own.raw"
    own.write_bytes(b"mine".ljust(4096, b"\0"))
    kernel = tiny_guest("hello")
    consts = {"OTHER_DISK": str(other_vm["disk"]), "OTHER_SOCK": str(other_vm["sock"]),
              "OTHER_JAIL": str(jail_dir() / str(other_vm["uid"])), "KERNEL": str(kernel), "OWN_DISK": str(own)}
    probe = "".join(f"{k} = {v!r}\n" for k, v in consts.items()) + textwrap.dedent(ESCAPE)
    r = probe_result(jailed(tiny_guest, "--disk", f"path={own}", probe=probe))
    assert r["uid"] >= ids.DEFAULT_BASE and r["uid"] != other_vm["uid"] and r["gid"] == r["uid"]
    assert r["groups"] == []
    assert "etc" not in r["root"] and "proc" not in r["root"] and "home" not in r["root"], r["root"]
    assert r["shadow"] == "ENOENT" and r["proc"] == "ENOENT"
    assert r["other_disk"] == "ENOENT" and r["other_sock"] == "ENOENT" and r["other_jail"] == "ENOENT"
    assert r["write_kernel"] in ("EROFS", "EACCES")
    assert r["own_disk"] == "allowed"
    assert os.stat(own).st_uid == 0                  # given back after the run


def test_another_vms_disk_bound_into_the_jail_is_still_refused_by_its_owner(tiny_guest, other_vm):
    """The uid layer alone: the other VM's disk (its uid's, mode 0600) given
    to this VM too, read-only: this VMM, as its own uid, cannot open it."""
    p = jailed(tiny_guest, "--disk", f"path={other_vm['disk']},readonly=on")
    assert p.returncode == 1
    assert p.stderr.strip().endswith(f"could not open '{other_vm['disk']}': Permission denied"), p.stderr


@pytest.mark.parametrize("call, syscall", [
    ("socket.socket(socket.AF_PACKET, socket.SOCK_RAW)", "socket"),
    ("os.execv('/bin/sh', ['sh', '-c', 'cat /etc/shadow'])", "execve"),
    ("ctypes.CDLL(None).syscall(101, 0, 0, 0, 0)", "ptrace"),
    ("os.mknod('/run/kvmkit/mem', 0o20600, os.makedev(1, 1))", "mknodat"),
    ("__import__('fcntl').ioctl(2, 0x5412, b'x')", "ioctl"),          # TIOCSTI: typing into the terminal
])
def test_a_forbidden_syscall_kills_the_vmm_and_the_report_names_it(tiny_guest, tmp_path, call, syscall):
    exit_file = tmp_path / "exit.json"
    p = jailed(tiny_guest, "--exit-file", str(exit_file),
               probe=f"import ctypes, os, socket\n{call}\nprint('survived')")
    assert p.returncode == 1
    assert "survived" not in p.stdout
    line = f"kvmkit run: error: the VMM was killed by seccomp: syscall {syscall}"
    assert p.stderr.strip().splitlines()[-1] == line, p.stderr
    assert json.loads(exit_file.read_text())["error"] == f"the VMM was killed by seccomp: syscall {syscall}"


def test_without_seccomp_the_other_layers_still_refuse(tiny_guest):
    """What a missing or too wide syscall list would leave: no capability, no privilege to regain."""
    probe = ATTEMPT + """
def mount():
    import ctypes
    if ctypes.CDLL(None, use_errno=True).mount(b"none", b"/run", b"tmpfs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), "mount")
print(json.dumps({"raw": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
                  "packet": attempt(lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW)),
                  "mknod": attempt(lambda: os.mknod("/run/kvmkit/mem", 0o20600, os.makedev(1, 1))),
                  "setuid0": attempt(lambda: os.setuid(0)),
                  "chroot": attempt(lambda: os.chroot("/run")),
                  "mount": attempt(mount),
                  "ifaces": [name for _, name in socket.if_nameindex()]}))
"""
    r = probe_result(jailed(tiny_guest, probe=probe, env={"KVMKIT_SECCOMP": "off"}))
    assert r["raw"] == r["packet"] == r["mknod"] == r["setuid0"] == r["chroot"] == r["mount"] == "EPERM", r
    assert r["ifaces"] == ["lo"], "the VMM's network namespace holds no interface"


def test_uid_range_exhausted_is_one_line_and_leaves_nothing(tiny_guest, tmp_path):
    base = 310000 + os.getpid() % 1000 * 10
    held = ids.allocate(ids.IdRange(base, 1))
    try:
        p = jailed(tiny_guest, "--disk", f"path={tmp_path}/d.raw", env={ids.ENV_RANGE: f"{base}:1"}) \
            if (tmp_path / "d.raw").write_bytes(bytes(4096)) else None
    finally:
        held.release()
    assert p.returncode == 1
    assert p.stderr.strip() == (f"kvmkit run: error: no free VM user id: all 1 of {base}-{base} are in use by "
                                f"running VMs (widen the range with {ids.ENV_RANGE}=BASE:COUNT)")
    assert not (jail_dir() / str(base)).exists()
    assert os.stat(tmp_path / "d.raw").st_uid == 0


def test_jail_dir_not_creatable(tiny_guest, tmp_path):
    sock = tmp_path / "q.sock"
    p = jailed(tiny_guest, "--qmp", f"unix:{sock},server,wait=off", env={"KVMKIT_JAIL_DIR": "/proc/kvmkit-jails"})
    assert p.returncode == 1
    last = p.stderr.strip().splitlines()
    assert len(last) == 1 and last[0].startswith("kvmkit run: error: jail directory /proc/kvmkit-jails/"), p.stderr
    assert "cannot create it" in last[0]
    assert not os.path.lexists(sock)


def test_not_root_is_a_clear_error(tiny_guest):
    """kvmkit's Python lives under /root here, so a nobody process cannot
    start it: a forked copy of this one drops to nobody and runs the CLI."""
    from kvmkit.cli.main import build_parser, main
    import kvmkit.cli.run_isolated, kvmkit.vmm.machine, locale  # noqa: F401,E401 - nobody cannot import them
    build_parser("run")
    kernel = str(tiny_guest("hello"))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 99
        try:
            os.close(r)
            sys.stderr = os.fdopen(w, "w")
            os.setresgid(65534, 65534, 65534)
            os.setresuid(65534, 65534, 65534)
            status = main(["run", "--isolation", "on", "--kernel", kernel])
            sys.stderr.flush()
        finally:
            os._exit(status)
    os.close(w)
    with os.fdopen(r) as f:
        err = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
    assert err.strip() == ("kvmkit run: error: --isolation on needs root (it makes namespaces, mounts and "
                                "device nodes, and switches to the VM's own uid); use --isolation off")


def test_a_mount_failure_inside_is_reported_and_the_jail_removed(tmp_path):
    """The jail API directly: a bind whose source vanished before the mount."""
    src = tmp_path / "gone.img"
    src.write_bytes(b"x")
    lease = ids.allocate()
    spec = JailSpec(root=tmp_path / "jail", uid=lease.uid, gid=lease.gid, binds=(Bind(str(src)),))
    try:
        build(spec)
        src.unlink()
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:                                  # a supervisor of its own: spawn() changes its PID namespace
            os.close(r)
            os.dup2(w, 2)                             # the jail keeps fds 0-2 only
            sys.stderr = os.fdopen(2, "w", closefd=False)
            code, sig = spawn(spec, lambda: 0).wait()
            os._exit(code if sig is None else 100)
        os.close(w)
        err = os.read(r, 4096).decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 1
        assert err.strip() == f"kvmkit run: error: jail: bind {src}: No such file or directory"
    finally:
        remove(spec)
        lease.release()
    assert not spec.root.exists()


def test_remove_refuses_a_jail_with_something_mounted(tmp_path):
    spec = JailSpec(root=tmp_path / "jail", uid=0, gid=0)
    build(spec)
    subprocess.run(["mount", "-t", "tmpfs", "none", str(spec.root / "dev")], check=True)
    try:
        with pytest.raises(JailError, match="still has mounts"):
            remove(spec)
        assert spec.root.exists()
    finally:
        subprocess.run(["umount", str(spec.root / "dev")], check=True)
    remove(spec)
    assert not spec.root.exists()


def _processes_of(uid: int) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                status = open(f"/proc/{entry.name}/status").read()
            except OSError:
                continue
            if f"\nUid:\t{uid}\t" in status:
                found.append(int(entry.name))
    return found


def test_a_vmm_dies_with_its_supervisor_even_by_sigkill(other_vm):
    assert len(_processes_of(other_vm["uid"])) == 2              # the jail's init and the VMM
    other_vm["proc"].kill()
    other_vm["proc"].wait()
    deadline = time.monotonic() + 10
    while _processes_of(other_vm["uid"]):
        assert time.monotonic() < deadline, "the jailed VMM outlived its supervisor"
        time.sleep(0.05)
    stale = jail_dir() / str(other_vm["uid"])
    assert stale.exists(), "a SIGKILLed supervisor cannot clean up"
    assert os.stat(other_vm["disk"]).st_uid == other_vm["uid"]       # the disk is still the VM user's
    p = run("--isolation", "on", "--kernel", str(other_vm["kernel"]), "-m", "64M", "--serial", "null",
            env={ids.ENV_RANGE: f"{other_vm['uid']}:1"})
    assert p.returncode == 1 and "error" not in p.stderr, p.stderr      # the hello guest's status
    assert not stale.exists(), "the next VM with that uid removes the stale jail"
    st = os.stat(other_vm["disk"])
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 0, 0o600), "the next jailed run gives the disk back"


def test_two_jailed_vms_restore_one_snapshot_and_the_acl_entries_go(tiny_guest, machine, tmp_path):
    """The snapshot stays root's (mode 0600); each jailed restore reads it
    through an ACL entry for its own uid, removed when it ends."""
    from kvmkit.host.acl import XATTR
    from kvmkit.monitor.server import QmpServer
    m = machine(tiny_guest("hello"), cmdline="7", start_paused=True)
    sock, snap = tmp_path / "vm.qmp", tmp_path / "snap"
    with QmpServer(m, f"unix:{sock}"):
        r = subprocess.run([*KVMKIT, "snapshot", "create", "--qmp", str(sock), str(snap)], capture_output=True,
                           text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    for f in snap.iterdir():
        os.chmod(f, 0o600)
    before = {f.name: os.getxattr(f, XATTR) if XATTR in os.listxattr(f) else None for f in snap.iterdir()}
    env = dict(os.environ)
    env.pop("KVMKIT_ISOLATION", None)
    runs = [subprocess.Popen([*KVMKIT, "run", "--isolation", "on", "--restore", str(snap), "--serial", "null"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) for _ in range(2)]
    for p in runs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == (7 << 1) | 1, err
    after = {f.name: os.getxattr(f, XATTR) if XATTR in os.listxattr(f) else None for f in snap.iterdir()}
    assert after == before
    assert all(os.stat(f).st_uid == 0 and os.stat(f).st_mode & 0o777 == 0o600 for f in snap.iterdir())
