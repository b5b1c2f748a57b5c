"""CPU sets, thread affinity and real-time scheduling of single threads.

A CPU list is libvirt's and the kernel's syntax (``0-3,^2,6``).  Pinning a
vCPU is ``sched_setaffinity`` on its thread (what libvirt does besides its
cpuset cgroup): it works on every host, with or without a cpuset
controller, and the kernel keeps the thread on those CPUs from the next
scheduling decision on.  A list naming a CPU the host does not have (or has
offline) is refused here, before anything is changed.
"""

from __future__ import annotations

import os

from kvmkit.errors import ConfigError, HostResourceError

SCHEDULERS = {"fifo": os.SCHED_FIFO, "rr": os.SCHED_RR, "other": os.SCHED_OTHER, "batch": os.SCHED_BATCH,
              "idle": os.SCHED_IDLE}


def online_cpus() -> frozenset[int]:
    """The host CPUs that exist and are online (``/sys/devices/system/cpu/online``)."""
    try:
        with open("/sys/devices/system/cpu/online") as f:
            return frozenset(parse_cpulist(f.read().strip(), check=False))
    except OSError:
        return frozenset(range(os.cpu_count() or 1))


def parse_cpulist(text: str, *, check: bool = True, what: str = "CPU list") -> frozenset[int]:
    """``0-3,^2,6`` → {0, 1, 3, 6}; with ``check``, every CPU must be online."""
    chosen: set[int] = set()
    excluded: set[int] = set()
    if not text.strip():
        raise ConfigError(f"{what} is empty")
    for part in text.split(","):
        part = part.strip()
        target = excluded if part.startswith("^") else chosen
        part = part.lstrip("^")
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ConfigError(f"{what} {text!r}: {part!r} is not a CPU number or range (e.g. 0-3,^2)")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last < first:
            raise ConfigError(f"{what} {text!r}: range {part} runs backwards")
        target.update(range(first, last + 1))
    cpus = frozenset(chosen - excluded)
    if not cpus:
        raise ConfigError(f"{what} {text!r} selects no CPU")
    if check:
        online = online_cpus()
        missing = sorted(cpus - online)
        if missing:
            raise ConfigError(f"{what} {text!r}: this host has no CPU {format_cpulist(missing)} "
                              f"(online: {format_cpulist(online)})")
    return cpus


def format_cpulist(cpus) -> str:
    """{0, 1, 2, 5} → ``0-2,5`` (the kernel's own way of writing it)."""
    out, run = [], []
    for c in sorted(cpus):
        if run and c == run[-1] + 1:
            run.append(c)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [c]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def set_affinity(tid: int, cpus: frozenset[int]) -> None:
    """Pin thread ``tid`` (0: the calling thread) to ``cpus``."""
    try:
        os.sched_setaffinity(tid, cpus)
    except OSError as exc:
        raise HostResourceError(f"cannot pin thread {tid or os.getpid()} to CPUs {format_cpulist(cpus)}: "
                                f"{exc.strerror}") from None


def get_affinity(tid: int) -> frozenset[int]:
    return frozenset(os.sched_getaffinity(tid))


def _stat_fields(pid: int, tid: int) -> list[str]:
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def last_cpu(pid: int, tid: int) -> int:
    """The CPU thread ``tid`` of ``pid`` last ran on (stat field 39, 'processor')."""
    return int(_stat_fields(pid, tid)[36])


def thread_cpu_time(pid: int, tid: int) -> float:
    """Seconds of CPU thread ``tid`` has used (utime + stime, fields 14 and 15)."""
    f = _stat_fields(pid, tid)
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def thread_policy(pid: int, tid: int) -> tuple[str, int]:
    """(scheduler name, real-time priority) of a thread (stat fields 41 and 40)."""
    f = _stat_fields(pid, tid)
    policy, prio = int(f[38]), int(f[37])
    name = next((n for n, v in SCHEDULERS.items() if v == policy), str(policy))
    return name, prio


def set_scheduler(tid: int, scheduler: str, priority: int = 0) -> None:
    """Give a thread a scheduling policy: ``fifo``/``rr`` with a real-time
    priority 1-99 (refused by the kernel without CAP_SYS_NICE or, on hosts
    with real-time group scheduling, in a cgroup without an RT budget)."""
    policy = SCHEDULERS[scheduler]
    if scheduler in ("fifo", "rr"):
        lo, hi = os.sched_get_priority_min(policy), os.sched_get_priority_max(policy)
        if not lo <= priority <= hi:
            raise ConfigError(f"{scheduler} priority {priority} must be from {lo} to {hi}")
    else:
        priority = 0
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(priority))
    except OSError as exc:
        raise HostResourceError(f"cannot give thread {tid or os.getpid()} the {scheduler} scheduler "
                                f"(priority {priority}): {exc.strerror}") from None
