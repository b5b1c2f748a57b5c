"""The jailed VMM's process tree: supervisor (outside) -> init (PID 1 of
the VM's PID namespace, jailed, unprivileged) -> VMM (PID 2, jailed, under
seccomp).

Why an init and not the VMM as PID 1: the kernel protects a namespace's
init from signals it has no handler for, the parent-death SIGKILL among
them, so a VMM that was PID 1 would outlive a supervisor killed with
SIGKILL.  This init watches a pipe whose other end only the supervisor
holds: at EOF (the supervisor is gone, however it died) it exits, and the
kernel kills everything in the namespace.  It passes SIGTERM/SIGHUP on to
the VMM and sends the VMM's end (exit status or killing signal) back up a
second pipe, since its own exit status could not carry a signal.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

from kvmkit.errors import KvmkitError
from kvmkit.host import jail

PR_SET_PDEATHSIG = 1


class JailedProcess:
    """The supervisor's handle: ``pid`` is the jail's init (a host pid)."""

    def __init__(self, pid: int, alive_fd: int, status_fd: int) -> None:
        self.pid, self._alive_fd, self._status_fd = pid, alive_fd, status_fd

    def signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except ProcessLookupError:
            pass

    @property
    def status_fd(self) -> int:
        """Readable once the VMM has ended (its end is sent, or init died)."""
        return self._status_fd

    def wait(self) -> tuple[int | None, int | None]:
        """(exit status, None) or (None, signal) for the VMM, once it has ended."""
        with os.fdopen(self._status_fd, "rb") as f:
            raw = f.read()
        os.waitpid(self.pid, 0)
        os.close(self._alive_fd)
        try:
            end = json.loads(raw)
            return end.get("exit"), end.get("signal")
        except ValueError:
            return 1, None                      # init died before saying (it printed why)


def spawn(spec: jail.JailSpec, target: Callable[[], int]) -> JailedProcess:
    """Fork the jail's init, which enters the jail and forks the VMM to run
    ``target`` (its return value is the VMM's exit status).

    The caller's later children share the new PID namespace and it may start
    no threads afterwards: call it from a supervisor process."""
    last_cap = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    import pyseccomp  # noqa: F401 - loaded (with libseccomp) out here: the jail has no ldconfig
    from kvmkit.host import seccomp_filter  # noqa: F401
    alive_r, alive_w = os.pipe2(os.O_CLOEXEC)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    jail._check(jail._libc.unshare(jail.CLONE_NEWPID), "new PID namespace (unshare)")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        os.close(alive_r)
        os.close(status_w)
        return JailedProcess(pid, alive_w, status_r)
    status: dict = {"exit": 1}
    try:
        os.close(alive_w)
        os.close(status_r)
        jail.enter(replace(spec, keep_fds=(*spec.keep_fds, alive_r, status_w)), last_cap)
        vmm = os.fork()
        if vmm == 0:
            _vmm(target, (alive_r, status_w))
        status = _init(vmm, alive_r)
    except KvmkitError as exc:
        print(f"kvmkit run: error: {exc}", file=sys.stderr)
    except BaseException as exc:  # noqa: BLE001 - never return into the supervisor's code
        import traceback
        traceback.print_exception(exc)
    finally:
        try:
            os.write(status_w, json.dumps(status).encode())
            sys.stderr.flush()
        finally:
            os._exit(0)
    raise AssertionError("unreachable")


def _vmm(target: Callable[[], int], init_fds: tuple[int, ...]) -> None:
    status = 1
    try:
        jail._check(jail._libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "die with the jail's init")
        for fd in init_fds:
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGINT else signal.default_int_handler)
        status = target()
    except KvmkitError as exc:
        print(f"kvmkit run: error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        status = 130
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001
        import traceback
        traceback.print_exception(exc)
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(status)


def _init(vmm: int, alive_fd: int) -> dict:
    """PID 1: until the VMM ends (its end, returned) or the supervisor does."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, _f: _forward(vmm, s))
    signal.signal(signal.SIGINT, signal.SIG_IGN)          # a terminal's Ctrl-C reaches the VMM itself
    while True:
        try:
            readable, _, _ = select.select([alive_fd], [], [], 0.05)
        except InterruptedError:
            readable = []
        if readable:                                       # EOF: the supervisor is gone
            os._exit(1)                                    # ... and the kernel ends the namespace
        pid, wstatus = os.waitpid(vmm, os.WNOHANG)
        if pid:
            if os.WIFSIGNALED(wstatus):
                return {"signal": os.WTERMSIG(wstatus)}
            return {"exit": os.WEXITSTATUS(wstatus)}


def _forward(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# --- seen from outside: a jail's processes and threads by their host ids -------------------
def _children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(name))
    return out


def vmm_pid(pid: int) -> int:
    """The host pid of the VMM that supervisor ``pid`` runs in a jail (the
    child of the jail's init), or ``pid`` itself when it is not a jail's
    supervisor (an unjailed VMM).  A manager holds the supervisor's pid."""
    try:
        ns = os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return pid
    for init in _children(pid):
        try:
            if os.readlink(f"/proc/{init}/ns/pid") == ns:
                continue
        except OSError:
            continue
        kids = _children(init)
        if kids:
            return kids[0]
    return pid


def host_tids(pid: int, tids: list[int]) -> list[int]:
    """Thread ids as the VMM reports them (QMP ``query-cpus-fast``: ids in
    its own PID namespace when jailed) → the host's ids, for affinity and
    cgroups.  ``pid`` is the supervisor's or the VMM's; unjailed, the ids
    are the host's already."""
    vmm = vmm_pid(pid)
    by_ns: dict[int, int] = {}
    try:
        tasks = os.listdir(f"/proc/{vmm}/task")
    except OSError:
        return tids
    for t in tasks:
        try:
            with open(f"/proc/{vmm}/task/{t}/status") as f:
                line = next((ln for ln in f if ln.startswith("NSpid:")), "")
        except OSError:
            continue
        ids = line.split()[1:]
        if len(ids) < 2:
            return tids                              # not in a PID namespace of its own
        by_ns[int(ids[-1])] = int(t)
    return [by_ns.get(t, vmm) for t in tids]       # unknown: the main thread's ("not started yet")
