"""Starting a domain's VMM: the ``kvmkit run`` command line for a
definition, and a detached process that outlives the manager.

The VMM runs in its own session (``setsid``: a terminal hang-up or the
manager's death does not reach it) with its run directory as working
directory, so its sockets are bound by short relative names whatever the
state directory's path.  It inherits the locked ``vmm.lock`` descriptor and
holds it until it dies: that is how every later manager command knows it is
alive (see :mod:`rundir`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import kvmkit
from kvmkit.host.jail import isolation_setting
from kvmkit.manager import files
from kvmkit.manager.domain import DomainDef
from kvmkit.manager.errors import OperationFailed, OperationInvalid, Unsupported
from kvmkit.manager.locks import try_lock
from kvmkit.manager.rundir import RunDir
from kvmkit.manager.vmmlink import reachable

#: libvirt's error_policy words as ``kvmkit run --disk werror=`` (and QEMU's -drive) spells them.
VMM_ERROR_ACTION = {"stop": "stop", "report": "report", "ignore": "ignore", "enospace": "enospc"}
START_TIMEOUT = 120.0           # 20 VMMs starting at once on 2 shared cores take a while
LOG_TAIL = 2000
_children: list[subprocess.Popen] = []   # reaped opportunistically: no zombies in long-lived callers


@dataclass(frozen=True)
class LiveValues:
    """What a definition leaves open and a start decides."""

    domain_id: int
    vsock_cid: int | None
    taps: tuple[str | None, ...]
    bridges: tuple[str | None, ...] = ()   # the bridge each tap joins (bridge and network interfaces)


def vmm_argv(d: DomainDef, rd: RunDir, live: LiveValues) -> list[str]:
    """``kvmkit run`` for ``d``; socket paths are relative to the run directory."""
    argv = [sys.executable, "-m", "kvmkit.cli.main", "run", "--kernel", d.kernel,
            "--memory", f"{d.memory >> 10}K", "--cpus", str(d.vcpus), "--name", d.name,
            "--uuid", d.uuid, "--qmp", f"unix:{rd.qmp_socket.name},server,wait=off",
            "--exit-file", rd.exit_file.name, "--reboot", "reset" if d.on_reboot == "restart" else "exit",
            "--serial", _serial(d, rd)]
    argv += ["--isolation", isolation_setting("on")]      # each VMM jailed (KVMKIT_ISOLATION=off to debug)
    argv += ["--jail-bind", str(rd.save_area)]             # saves and snapshots of the running VM go there
    if d.initrd:
        argv += ["--initrd", d.initrd]
    if d.cmdline is not None:
        argv += ["--cmdline", d.cmdline]
    if not d.acpi:
        argv.append("--no-acpi")
    for disk in d.disks:
        _no_comma(disk.source)
        spec = f"path={disk.source},format={disk.format}"
        spec += ",readonly=on" if disk.readonly else ""
        spec += f",cache={disk.cache}" if disk.cache else ""
        spec += ",discard=unmap" if disk.discard == "unmap" else ""
        spec += f",serial={disk.serial}" if disk.serial else ""
        spec += f",werror={VMM_ERROR_ACTION[disk.error_policy]}" if disk.error_policy else ""
        spec += f",rerror={disk.rerror_policy}" if disk.rerror_policy else ""
        argv += ["--disk", spec]
    for i, (nic, tap) in enumerate(zip(d.interfaces, live.taps)):
        spec = f"tap={tap},mac={nic.mac}" if tap else f"mac={nic.mac}"
        bridge = live.bridges[i] if i < len(live.bridges) else None
        argv += ["--net", spec + (f",bridge={bridge}" if bridge else "")]
    if d.rng:
        argv.append("--rng")
    if d.balloon:
        argv += ["--balloon", f"deflate-on-oom={'on' if d.balloon_autodeflate else 'off'}"]
    if d.vsock is not None and live.vsock_cid is not None:
        argv += ["--vsock", f"cid={live.vsock_cid},uds={rd.vsock_socket.name}"]
    argv += tuning_args(d.tuning)
    return argv


def restore_argv(d: DomainDef, rd: RunDir, state: Path, paused: bool) -> list[str]:
    """``kvmkit run --restore STATE`` for ``d``: the machine (disks, NICs,
    vsock) comes from the saved state; sockets and the exit file are this run's."""
    _no_comma(str(state))
    argv = [sys.executable, "-m", "kvmkit.cli.main", "run", "--restore", str(state),
            "--qmp", f"unix:{rd.qmp_socket.name},server,wait=off", "--exit-file", rd.exit_file.name,
            "--serial", _serial(d, rd), "--isolation", isolation_setting("on"), "--jail-bind", str(rd.save_area)]
    return argv + (["--paused"] if paused else [])


def incoming_argv(d: DomainDef, rd: RunDir, socket_name: str) -> list[str]:
    """``kvmkit run --incoming unix:NAME`` for ``d`` (NAME in the run directory):
    the machine comes from the migration stream, as from a saved state."""
    return [sys.executable, "-m", "kvmkit.cli.main", "run", "--incoming", f"unix:{socket_name}",
            "--qmp", f"unix:{rd.qmp_socket.name},server,wait=off", "--exit-file", rd.exit_file.name,
            "--serial", _serial(d, rd), "--isolation", isolation_setting("on"), "--jail-bind", str(rd.save_area)]


def tuning_args(t) -> list[str]:
    """<cputune>, <memtune>, <memoryBacking> as ``kvmkit run`` options."""
    from kvmkit.host.hugepages import hugetlbfs_mounts
    from kvmkit.manager.tuning import vmm_args
    mounts = hugetlbfs_mounts() if t.hugepages and t.source == "file" else {}
    return vmm_args(t, str(next(iter(mounts))) if mounts else None)


def _serial(d: DomainDef, rd: RunDir) -> str:
    if d.serial is None:
        return "null"
    if d.serial.type == "pty":                 # `virsh console` is the terminal
        return f"unix:{rd.console_socket.name}"
    _no_comma(d.serial.path or "")
    return f"{d.serial.type}:{d.serial.path}"


def _no_comma(path: str) -> None:
    if "," in path:
        raise Unsupported([f"the path {path!r} (a ',' in a path; kvmkit run's options are comma-separated)"])


def console_socket(d: DomainDef, rd: RunDir) -> Path | None:
    """Where ``virsh console`` connects, or None if COM1 is not a socket."""
    if d.serial is None or d.serial.type == "file":
        return None
    return rd.console_socket if d.serial.type == "pty" else Path(d.serial.path or "")


def claim(rd: RunDir) -> int:
    """Lock ``vmm.lock`` for a VMM about to start (refused if one is alive).
    From here the domain counts as active: the VMM inherits this lock."""
    rd.path.mkdir(parents=True, exist_ok=True)
    lock_fd = try_lock(rd.vmm_lock)
    if lock_fd is None:
        raise OperationInvalid("domain is already running")
    return lock_fd


def spawn(argv: list[str], rd: RunDir, log: Path, lock_fd: int) -> int:
    """Start the VMM detached, handing it the claimed ``vmm.lock`` (the
    caller closes its copy); returns its pid."""
    _reap()
    env = dict(os.environ)
    root = str(Path(kvmkit.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    with open(log, "ab") as out:
        out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}: starting up: {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(argv, cwd=rd.path, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True, pass_fds=(lock_fd,), env=env)
    files.atomic_write(rd.pid_file, f"{proc.pid}\n")
    _children.append(proc)
    return proc.pid


def wait_ready(rd: RunDir, pid: int, log: Path, timeout: float = START_TIMEOUT) -> None:
    """Until the VMM's monitor answers; a VMM that dies first is an error
    carrying the end of its log (where it said why)."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        if rd.qmp_socket.exists() and reachable(rd.qmp_socket):
            return
        if not rd.alive():
            raise OperationFailed(f"the VMM exited while starting: {log_tail(log)}")
        if time.monotonic() > deadline:
            raise OperationFailed(f"the VMM (pid {pid}) did not start within {timeout:g}s; see {log}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def log_tail(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, os.path.getsize(log) - LOG_TAIL))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return "(no log)"
    tail = [ln for ln in lines if ln.strip() and "starting up:" not in ln][-3:]
    return " / ".join(tail) or "(nothing in its log)"


def _reap() -> None:
    for p in list(_children):
        if p.poll() is not None:
            _children.remove(p)
