"""The manager SIGKILLed at random points of define, start, clone,
snapshot-create-as (of shut-off and of running domains), snapshot-revert
to a running snapshot, managedsave and live migrate
(the CLI as a subprocess, killed after a random delay, many times):
afterwards every domain, disk, snapshot and saved state is either fully
there or not there, ``list --all`` says so, a guest the killed command
paused runs again, and the consistency check passes.  And the other way round: a VMM SIGKILLed is reported
``shut off (crashed)``, and a VMM outlives the manager that started it."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmkit.block import create_image, open_image
from kvmkit.block.qcow2 import snapshots as qsnap

from .helpers import REPO, tiny_xml

pytestmark = pytest.mark.kvm
# Each kill test is ROUNDS manager runs SIGKILLed at random moments (10-25 s
# apiece): slow, so the fast suite stays a quick loop; CI runs them.
rounds = pytest.mark.slow

ROUNDS = 20
MARK = b"written before any clone"


class Cli:
    def __init__(self, state_dir: Path) -> None:
        self.argv = [sys.executable, "-m", "kvmkit.cli.main", "virsh", "-q", "-c", str(state_dir)]
        self.env = dict(os.environ, PYTHONPATH=str(REPO))
        self.startup = 0.0

    def run(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv + list(args), capture_output=True, text=True, env=self.env, timeout=120)

    def timed(self, *args: str) -> float:
        t = time.monotonic()
        res = self.run(*args)
        assert res.returncode == 0, res.stderr
        return time.monotonic() - t

    def killed(self, args: tuple[str, ...], delay: float) -> int:
        """Run, SIGKILL after ``delay`` s (its whole process group); the exit status."""
        p = subprocess.Popen(self.argv + list(args), env=self.env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            p.wait(delay)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
        return p.wait()

    def names(self) -> list[str]:
        return self.run("list", "--all", "--name").stdout.split()


@pytest.fixture
def cli(state_dir, host) -> Cli:
    c = Cli(state_dir)
    c.startup = min(c.timed("list") for _ in range(3))
    return c


def assert_consistent(host) -> None:
    report = host.check()
    assert report.problems == [], report.problems


def vmm_processes(uuid: str, *run_dirs: Path) -> int:
    """VMMs of the domain: by the UUID on a booting VMM's command line, or
    (a restored or migrated one has none) by running in one of ``run_dirs``;
    a jailed VMM and its supervisor (its parent, same command line) count as one."""
    found: dict[int, int] = {}
    dirs = {str(d.resolve()) for d in run_dirs}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmd = Path(entry.path, "cmdline").read_bytes().split(b"\0")
                ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
                cwd = os.readlink(Path(entry.path, "cwd")) if dirs else ""
            except (OSError, ValueError, IndexError):
                continue
            if b"run" in cmd and (uuid.encode() in cmd or cwd in dirs):
                found[int(entry.name)] = ppid
    return sum(1 for ppid in found.values() if ppid not in found)


@rounds
def test_killed_define(cli, host, idle, tmp_path):
    cost = cli.timed("define", str(_xml(tmp_path, "probe", idle)))
    for i in range(ROUNDS):
        name = f"def{i}"
        xml = _xml(tmp_path, name, idle, uuid=f"00000000-0000-4000-8000-{i:012d}")
        cli.killed(("define", str(xml)), _delay(cost, cli.startup))
        listed = name in cli.names()
        assert listed == host.sd.definition(name).exists()
        if listed:
            assert host.lookup(name).uuid == f"00000000-0000-4000-8000-{i:012d}"
        assert_consistent(host)
    assert set(cli.names()) <= {"probe"} | {f"def{i}" for i in range(ROUNDS)}


@rounds
def test_killed_start(cli, host, idle, tmp_path):
    info = host.define(tiny_xml("s", idle))
    cost = cli.timed("start", "s")
    host.destroy("s")
    for _ in range(ROUNDS):
        cli.killed(("start", "s"), _delay(cost, cli.startup))
        state = cli.run("domstate", "s").stdout.strip()
        assert state in ("running", "shut off")
        if state == "running":
            deadline = time.monotonic() + 30                   # a VMM it spawned may still be starting
            while cli.run("qemu-monitor-command", "s", '{"execute":"query-status"}').returncode != 0:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert vmm_processes(info.uuid) == (1 if state == "running" else 0)
        assert_consistent(host)
        if state == "running":
            host.destroy("s")
    assert cli.names() == ["s"]


@rounds
def test_killed_clone(cli, host, idle, tmp_path):
    disk = tmp_path / "orig.qcow2"
    create_image(str(disk), "qcow2", 16 << 20)
    with open_image(str(disk)) as img:
        img.pwrite(0, MARK)
    host.define(tiny_xml("orig", idle, disks=(str(disk),)))
    cost = cli.timed("clone", "--original", "orig", "--name", "probe", "--auto-clone")
    for i in range(ROUNDS):
        name = f"cl{i}"
        cli.killed(("clone", "--original", "orig", "--name", name, "--auto-clone"), _delay(cost, cli.startup))
        assert_consistent(host)                                 # recovers an interrupted clone
        listed = name in cli.names()
        files = sorted(p.name for p in tmp_path.glob(f"{name}*.qcow2"))
        if listed:
            (clone_disk,) = host.lookup(name).definition.disks
            with open_image(clone_disk.source, readonly=True) as img:
                assert img.pread(0, len(MARK)) == MARK
            assert files == [f"{name}.qcow2"]
        else:
            assert files == []                                  # nothing of it is left
        with open_image(str(disk), readonly=True) as img:       # the original always works
            assert img.pread(0, len(MARK)) == MARK
    bases = list(tmp_path.glob("orig.base-*.qcow2"))
    with open_image(str(disk), readonly=True) as img:
        chain = list(img.chain())
    assert len(chain) == len(bases) + 1                         # no base that nothing stands on


@rounds
def test_killed_snapshot_create(cli, host, idle, tmp_path):
    disk = tmp_path / "snap.qcow2"
    create_image(str(disk), "qcow2", 16 << 20)
    host.define(tiny_xml("sn", idle, disks=(str(disk),)))
    cost = cli.timed("snapshot-create-as", "sn", "probe")
    for i in range(ROUNDS):
        cli.killed(("snapshot-create-as", "sn", f"s{i}"), _delay(cost, cli.startup))
        assert_consistent(host)
        listed = set(cli.run("snapshot-list", "sn", "--name").stdout.split())
        with open_image(str(disk), readonly=True) as img:
            inside = {s.name for s in qsnap.read_snapshots(img)}
        assert listed == inside                                 # metadata and disk agree
    res = subprocess.run(["qemu-img", "check", str(disk)], capture_output=True, text=True)
    # 3 = leaked clusters only: what a kill between a refcount update and
    # the table write leaves (QEMU's qcow2 does the same); no corruption.
    assert res.returncode in (0, 3) and "corrupt" not in res.stdout.lower(), res.stdout + res.stderr


def _disk_snapshots(path: Path) -> set[str]:
    out = subprocess.run(["qemu-img", "snapshot", "-U", "-l", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return {line.split()[1] for line in out.splitlines()[2:] if line.strip()}


@rounds
def test_killed_snapshot_create_of_a_running_domain(cli, host, idle, tmp_path):
    from kvmkit.manager.vmstate import open_state
    disk = tmp_path / "live.qcow2"
    create_image(str(disk), "qcow2", 16 << 20)
    host.define(tiny_xml("lv", idle, disks=(str(disk),)))
    host.start("lv")
    cost = cli.timed("snapshot-create-as", "lv", "probe")
    for i in range(ROUNDS):
        cli.killed(("snapshot-create-as", "lv", f"s{i}"), _delay(cost, cli.startup))
        assert_consistent(host)                                 # waits for the VMM, undoes or keeps
        listed = set(cli.run("snapshot-list", "lv", "--name").stdout.split())
        assert listed == _disk_snapshots(disk)                  # metadata and the open disk agree
        folder = host.sd.snapshot_dir("lv")
        assert sorted(p.name for p in folder.glob("*.state*")) == sorted(f"{n}.state" for n in listed)
        for name in listed:
            open_state(folder / f"{name}.state")                # every kept state is complete
        assert cli.run("domstate", "lv").stdout.strip() == "running"     # never left paused
    host.destroy("lv")
    res = subprocess.run(["qemu-img", "check", str(disk)], capture_output=True, text=True)
    assert res.returncode in (0, 3) and "corrupt" not in res.stdout.lower(), res.stdout + res.stderr


@rounds
def test_killed_snapshot_revert_to_a_running_snapshot(cli, host, idle, tmp_path):
    disk = tmp_path / "rv.qcow2"
    create_image(str(disk), "qcow2", 16 << 20)
    info = host.define(tiny_xml("rv", idle, disks=(str(disk),)))
    host.start("rv")
    host.snapshot_create("rv", "base")
    cost = cli.timed("snapshot-revert", "rv", "base")
    for _ in range(ROUNDS):
        cli.killed(("snapshot-revert", "rv", "base"), _delay(cost, cli.startup))
        assert_consistent(host)                                 # finishes the revert: the guest runs
        assert cli.run("domstate", "--reason", "rv").stdout.strip() in ("running (from snapshot)",
                                                                        "running (booted)"), \
            cli.run("domstate", "--reason", "rv").stdout
        assert vmm_processes(info.uuid, host.sd.run_dir("rv")) == 1
    host.destroy("rv")
    res = subprocess.run(["qemu-img", "check", str(disk)], capture_output=True, text=True)
    assert res.returncode in (0, 3) and "corrupt" not in res.stdout.lower(), res.stdout + res.stderr


@rounds
def test_killed_managedsave(cli, host, idle, tmp_path):
    from kvmkit.manager.vmstate import open_state
    host.define(tiny_xml("ms", idle))
    host.start("ms")
    cost = cli.timed("managedsave", "ms")
    for _ in range(ROUNDS):
        if not host.lookup("ms").active:
            host.start("ms")                                    # continues the managed save
        cli.killed(("managedsave", "ms"), _delay(cost, cli.startup))
        assert_consistent(host)                                 # a complete save ends the VMM
        state = cli.run("domstate", "--reason", "ms").stdout.strip()
        managed = host.sd.managed_save("ms")
        if state in ("running (booted)", "running (restored)"):
            assert not managed.exists()
        else:
            assert state == "shut off (saved)", state
            open_state(managed)                                 # complete, or it would not be there
        assert not [p for p in host.sd.sub("save").iterdir() if p != managed]   # no half-written state
    assert cli.names() == ["ms"]


@rounds
def test_killed_migrate(cli, host, idle, tmp_path):
    """Killed mid-migration, between two state directories, back and forth:
    after recovery the guest runs in exactly one VMM, on exactly one side."""
    from kvmkit.manager import Host
    info = host.define(tiny_xml("mg", idle))
    host.start("mg")
    there = Host(tmp_path / "other-host")
    there_cli = Cli(there.state_dir)
    there_cli.startup = cli.startup
    sides = [(host, cli), (there, there_cli)]
    cost = cli.timed("migrate", "mg", str(there.state_dir))
    at = 1
    try:
        for _ in range(ROUNDS):
            (src, src_cli), (dst, _) = sides[at], sides[1 - at]
            src_cli.killed(("migrate", "mg", str(dst.state_dir)), _delay(cost, cli.startup))
            assert_consistent(src)                              # recovers the interrupted migrate
            assert_consistent(dst)
            active = [i for i, (h, _) in enumerate(sides)
                      if any(d.name == "mg" and d.active for d in h.domains(inactive=False))]
            assert len(active) == 1, active                     # on one side, never both or neither
            at = active[0]
            state = sides[at][0].lookup("mg")
            assert state.state == "running", state              # never left paused
            assert vmm_processes(info.uuid, host.sd.run_dir("mg"), there.sd.run_dir("mg")) == 1
            assert host.lookup("mg").persistent                 # the definition stays at home
    finally:
        for h, _ in sides:
            for d in h.domains(inactive=False):
                h.destroy(d.name)


def test_a_killed_vmm_is_shut_off_crashed(cli, host, idle):
    host.define(tiny_xml("k", idle))
    info = host.start("k")
    os.kill(info.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while cli.run("domstate", "k").stdout.strip() != "shut off":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert cli.run("domstate", "--reason", "k").stdout == "shut off (crashed)\n"
    assert "State:          shut off" in cli.run("dominfo", "k").stdout
    assert cli.run("start", "k").returncode == 0                # and it starts again
    assert cli.run("domstate", "--reason", "k").stdout == "running (booted)\n"


def test_a_vmm_outlives_the_manager_that_started_it(cli, host, idle):
    info = host.define(tiny_xml("o", idle))
    p = subprocess.Popen(cli.argv + ["start", "o"], env=cli.env, stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    assert p.stdout.readline() == "Domain 'o' started\n"
    os.killpg(p.pid, signal.SIGKILL)                            # the manager and anything in its group
    p.wait()
    time.sleep(0.3)
    assert cli.run("domstate", "o").stdout == "running\n"
    assert vmm_processes(info.uuid) == 1


def _delay(cost: float, startup: float) -> float:
    """A kill time inside the command's own work: after the interpreter and
    imports (``startup``, the time a ``list`` takes), before its end."""
    return random.uniform(0.9 * startup, 1.05 * cost)


def _xml(folder: Path, name: str, kernel: Path, uuid: str | None = None) -> Path:
    path = folder / f"{name}.xml"
    path.write_text(tiny_xml(name, kernel, uuid=uuid))
    return path
