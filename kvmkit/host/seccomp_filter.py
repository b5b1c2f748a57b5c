"""The jailed VMM's seccomp filter: the syscalls it is seen to make, and no
others.

It is loaded once the VMM has built its machine (every image, tap, device
node and listening socket is open by then), so the list covers a running
VM only: vCPU threads (``ioctl`` on KVM fds, futexes, signals to kick a
vCPU), device backends (reads and writes, ``fsync``/``fallocate`` for
virtio-blk, ``getrandom`` for virtio-rng, ``madvise`` for the balloon),
the QMP and console sockets (``accept4``, ``poll``, ``sendmsg``...),
snapshot save and restore, and Python itself (imports done late open and
map files).  It was found by running every VM path under ``strace`` and
under :data:`LOG` mode (unlisted calls are logged to the kernel's audit
log instead of killing), see the README.  New sockets may only be Unix
sockets (a vsock connection to the host, a snapshot stream); ``execve``,
``ptrace``, ``mount``, raw sockets and the like are not on the list, so a
VMM that a guest took over and tries one is killed at once
(``SECCOMP_RET_KILL_PROCESS``): the kernel's audit record then names the
syscall, and :class:`AuditLog` finds it for the report.
"""

from __future__ import annotations

import os
import re
import socket
import time

from kvmkit.errors import HostResourceError

ENFORCE, LOG = "enforce", "log"

ALLOWED: tuple[str, ...] = (
    # memory (guest RAM, Python's allocator, thread stacks, the balloon)
    "brk", "mmap", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync", "mlock", "munlock",
    # files: images, snapshot files, late imports
    "read", "write", "pread64", "pwrite64", "readv", "writev", "preadv", "pwritev", "preadv2", "pwritev2",
    "openat", "open", "close", "lseek", "fstat", "stat", "lstat", "newfstatat", "statx", "fstatfs", "statfs",
    "fsync", "fdatasync", "fallocate", "ftruncate", "sync_file_range", "getdents64", "readlink", "readlinkat",
    "access", "faccessat", "faccessat2", "getcwd", "mkdir", "mkdirat", "rename", "renameat", "renameat2",
    "unlink", "unlinkat", "fchmod", "fadvise64", "copy_file_range", "sendfile", "flock", "fcntl",
    "dup", "dup2", "dup3", "pipe", "pipe2", "memfd_create", "umask", "chdir", "fchdir",
    "close_range",
    # KVM and device fds ("ioctl" below: all but TIOCSTI)
    "eventfd2",
    # waiting
    "poll", "ppoll", "select", "pselect6", "epoll_create1", "epoll_ctl", "epoll_wait", "epoll_pwait",
    "epoll_pwait2", "futex", "futex_waitv", "nanosleep", "clock_nanosleep", "sched_yield",
    "timerfd_create", "timerfd_settime", "timerfd_gettime",
    # time (vDSO fallbacks)
    "clock_gettime", "clock_getres", "gettimeofday", "time",
    # threads and signals
    "clone", "clone3", "set_robust_list", "get_robust_list", "rseq", "set_tid_address", "exit", "exit_group",
    "gettid", "getpid", "getppid", "tgkill", "tkill", "rt_sigaction", "rt_sigprocmask", "rt_sigreturn",
    "rt_sigtimedwait", "sigaltstack", "kill", "restart_syscall", "sched_getaffinity", "sched_setaffinity",
    "getpriority", "setpriority", "prctl", "arch_prctl", "sched_getparam", "sched_getscheduler",
    # identity and host facts Python and the VMM read
    "getuid", "geteuid", "getgid", "getegid", "getgroups", "getresuid", "getresgid", "uname", "sysinfo",
    "getrandom", "getrlimit", "prlimit64", "getrusage", "times",
    # sockets: QMP, serial console, vsock (Unix sockets only: see socket() below)
    "accept", "accept4", "bind", "listen", "connect", "shutdown", "getsockname", "getpeername",
    "getsockopt", "setsockopt", "sendto", "recvfrom", "sendmsg", "recvmsg", "sendmmsg", "recvmmsg",
    "socketpair",
)
# socket(2) only for these families: an escaped guest gets no raw or network socket.
SOCKET_FAMILIES = (socket.AF_UNIX,)
# ioctl(2) on any fd but this request: it would type into the terminal kvmkit run sits on.
TIOCSTI = 0x5412


def install(mode: str = ENFORCE) -> None:
    """Load the filter into this process (all its threads, and every thread
    it starts later).  NO_NEW_PRIVS must be set (the jail does that)."""
    import pyseccomp as sc
    default = sc.KILL_PROCESS if mode == ENFORCE else sc.LOG
    try:
        f = sc.SyscallFilter(default)
        f.set_attr(sc.Attr.CTL_TSYNC, 1)        # every thread that exists already, too
        for name in ALLOWED:
            try:
                f.add_rule(sc.ALLOW, name)
            except (OSError, ValueError, RuntimeError):
                pass                             # not a syscall on this architecture
        for family in SOCKET_FAMILIES:
            f.add_rule(sc.ALLOW, "socket", sc.Arg(0, sc.EQ, family))
        f.add_rule(sc.ALLOW, "ioctl", sc.Arg(1, sc.NE, TIOCSTI))
        f.load()
    except OSError as exc:
        raise HostResourceError(f"seccomp filter: cannot load it: {exc.strerror or exc}") from None


_AUDIT = re.compile(rb"type=1326 .*? uid=(\d+) .*? syscall=(\d+)")


class AuditLog:
    """The kernel log from now on: opened before the VMM starts, so that
    only records of this run are read.  A seccomp kill leaves an audit
    record (type 1326) with the uid and the syscall number; the uid is this
    VM's alone while it runs."""

    def __init__(self) -> None:
        try:
            self._fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError:
            self._fd = -1                        # no kernel log: a kill is then reported without the name

    def killed_by(self, uid: int, wait: float = 1.0) -> str | None:
        """The syscall seccomp killed ``uid``'s process for, or None if no record came."""
        deadline = time.monotonic() + wait
        while self._fd >= 0:
            try:
                rec = os.read(self._fd, 8192)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return None
                time.sleep(0.05)
                continue
            except OSError:                      # EPIPE: records overwritten meanwhile; read on
                continue
            m = _AUDIT.search(rec)
            if m and int(m.group(1)) == uid:
                return syscall_name(int(m.group(2)))
        return None

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def syscall_name(nr: int) -> str:
    import pyseccomp as sc
    try:
        name = sc.resolve_syscall(sc.system_arch(), nr)
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:  # noqa: BLE001 - an unknown number is still worth naming
        return f"#{nr}"
