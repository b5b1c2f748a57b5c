"""One VM's resource settings (libvirt's ``<cputune>``, ``<memtune>``,
``<vcpusched>``) as a frozen value, and what applies them to a VMM's
threads: cgroups (:mod:`cgroups`) for shares, bandwidth and memory, thread
affinity and scheduling (:mod:`affinity`) for pinning and real-time.

The same :class:`VmResources` serves ``kvmkit run`` (the VMM applies its
own settings: the process at start, each vCPU thread from itself before
its first ``KVM_RUN``) and the manager (``virsh vcpupin`` / ``schedinfo
--set`` / ``memtune`` on a running domain: the threads' ids come from QMP
``query-cpus-fast``, the cgroup tree from ``/proc/PID/cgroup``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kvmkit.errors import ConfigError
from kvmkit.host import affinity
from kvmkit.host.cgroups import VmCgroup

PERIOD_RANGE = (1000, 1_000_000)        # µs, the kernel's limits for cfs_period_us / cpu.max
MIN_QUOTA = 1000
SHARES_RANGE = (2, 262144)
SCOPES = ("vcpu", "emulator", "global")


@dataclass(frozen=True)
class Bandwidth:
    """CFS bandwidth: ``quota`` µs of CPU time per ``period`` µs (-1: no limit)."""

    period: int | None = None
    quota: int | None = None

    def check(self, what: str) -> None:
        if self.period is not None and not PERIOD_RANGE[0] <= self.period <= PERIOD_RANGE[1]:
            raise ConfigError(f"{what} period {self.period} µs must be from {PERIOD_RANGE[0]} to {PERIOD_RANGE[1]}")
        if self.quota is not None and self.quota != -1 and self.quota < MIN_QUOTA:
            raise ConfigError(f"{what} quota {self.quota} µs must be at least {MIN_QUOTA} (or -1: unlimited)")


@dataclass(frozen=True)
class VcpuSched:
    vcpus: frozenset[int]
    scheduler: str                      # fifo | rr | other | batch | idle
    priority: int = 0


@dataclass(frozen=True)
class ResourceSpec:
    affinity: frozenset[int] | None = None       # every thread (libvirt <vcpu cpuset=...>)
    vcpu_pins: tuple[tuple[int, frozenset[int]], ...] = ()
    emulator_pin: frozenset[int] | None = None
    shares: int | None = None
    bandwidth: tuple[tuple[str, Bandwidth], ...] = ()   # (scope, bandwidth)
    memory_hard: int | None = None               # bytes
    memory_soft: int | None = None
    vcpu_sched: tuple[VcpuSched, ...] = ()

    @property
    def empty(self) -> bool:
        return self == ResourceSpec()

    @property
    def pinned(self) -> bool:
        return bool(self.affinity or self.vcpu_pins or self.emulator_pin)

    def controllers(self) -> set[str]:
        out = set()
        if self.shares is not None or self.bandwidth or self.rt_vcpus():
            out.add("cpu")
        if self.memory_hard is not None or self.memory_soft is not None:
            out.add("memory")
        return out

    def pin_of(self, vcpu: int) -> frozenset[int] | None:
        return dict(self.vcpu_pins).get(vcpu, self.affinity)

    def sched_of(self, vcpu: int) -> VcpuSched | None:
        return next((s for s in self.vcpu_sched if vcpu in s.vcpus), None)

    def rt_vcpus(self) -> list[int]:
        return sorted({v for s in self.vcpu_sched if s.scheduler in ("fifo", "rr") for v in s.vcpus})

    def validate(self, vcpus: int, memory: int) -> None:
        """Refuse, before anything is set up, what cannot work for a VM of
        ``vcpus`` vCPUs and ``memory`` bytes of RAM."""
        from kvmkit.sizes import format_size
        for v, _ in self.vcpu_pins:
            if not 0 <= v < vcpus:
                raise ConfigError(f"vCPU pinning names vCPU {v}: the VM has {vcpus} (0-{vcpus - 1})")
        for s in self.vcpu_sched:
            bad = sorted(v for v in s.vcpus if not 0 <= v < vcpus)
            if bad:
                raise ConfigError(f"vCPU scheduling names vCPU {bad[0]}: the VM has {vcpus} (0-{vcpus - 1})")
            if s.scheduler not in affinity.SCHEDULERS:
                raise ConfigError(f"vCPU scheduler {s.scheduler!r}: expected fifo, rr, other, batch or idle")
            if s.scheduler in ("fifo", "rr") and not 1 <= s.priority <= 99:
                raise ConfigError(f"{s.scheduler} priority {s.priority} must be from 1 to 99")
        if self.shares is not None and not SHARES_RANGE[0] <= self.shares <= SHARES_RANGE[1]:
            raise ConfigError(f"cpu shares {self.shares} must be from {SHARES_RANGE[0]} to {SHARES_RANGE[1]}")
        for scope, bw in self.bandwidth:
            if scope not in SCOPES:
                raise ConfigError(f"cpu bandwidth scope {scope!r}: expected vcpu, emulator or global")
            bw.check(f"{scope} cpu")
        for what, limit in (("hard", self.memory_hard), ("soft", self.memory_soft)):
            if limit is not None and limit != -1 and limit < memory:
                raise ConfigError(f"memory {what} limit {format_size(limit)} is below the guest's "
                                  f"{format_size(memory)} of RAM (the VMM needs that and more)")


def parse_bandwidth(text: str, what: str = "--cpu-quota") -> Bandwidth:
    """``20%`` (of one CPU, per 100 ms), ``QUOTA`` or ``QUOTA/PERIOD`` in µs, or ``-1``."""
    t = text.strip()
    try:
        if t.endswith("%"):
            pct = float(t[:-1])
            if not 0 < pct:
                raise ValueError
            return Bandwidth(100_000, max(MIN_QUOTA, round(pct * 1000)))
        quota, _, period = t.partition("/")
        return Bandwidth(int(period) if period else None, int(quota))
    except ValueError:
        raise ConfigError(f"{what} {text!r}: expected a percentage of one CPU (20%), QUOTA or "
                          "QUOTA/PERIOD in microseconds, or -1") from None


def parse_vcpu_pin(text: str) -> tuple[int, frozenset[int]]:
    """``VCPU:CPULIST`` (``kvmkit run --vcpu-pin 0:1``)."""
    v, sep, cpus = text.partition(":")
    if not sep or not v.strip().isdigit():
        raise ConfigError(f"--vcpu-pin {text!r}: expected VCPU:CPULIST, e.g. 0:1 or 1:2-3")
    return int(v), affinity.parse_cpulist(cpus, what=f"--vcpu-pin {v}: CPU list")


def parse_vcpu_sched(text: str) -> VcpuSched:
    """``VCPUS:SCHEDULER[:PRIORITY]`` (``--vcpu-sched 0-1:fifo:10``)."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ConfigError(f"--vcpu-sched {text!r}: expected VCPUS:SCHEDULER[:PRIORITY], e.g. 0:fifo:10")
    vcpus = affinity.parse_cpulist(parts[0], check=False, what=f"--vcpu-sched {text} vCPU list")
    if len(parts) == 3 and not parts[2].isdigit():
        raise ConfigError(f"--vcpu-sched {text!r}: priority {parts[2]!r} is not a number")
    return VcpuSched(vcpus, parts[1], int(parts[2]) if len(parts) == 3 else 0)


class VmResources:
    """The settings of one VM applied to one VMM process (see the module docstring)."""

    def __init__(self, spec: ResourceSpec, cgroup: VmCgroup | None, pid: int) -> None:
        self.spec = spec
        self.cgroup = cgroup
        self.pid = pid

    @classmethod
    def apply(cls, spec: ResourceSpec, name: str, vcpus: int, pid: int | None = None) -> "VmResources":
        """Set up everything that does not need the vCPU threads: the cgroup
        tree with its limits (only if the spec needs one), the process in it,
        and its threads' affinity.  All or nothing."""
        pid = os.getpid() if pid is None else pid
        cg = None
        controllers = spec.controllers()
        if controllers:
            cg = VmCgroup.create(name, vcpus, controllers, pid=pid)
        self = cls(spec, cg, pid)
        try:
            if cg is not None:
                if spec.shares is not None:
                    cg.set_shares(spec.shares)
                for scope, bw in spec.bandwidth:
                    cg.set_bandwidth(scope, bw.period, bw.quota)
                if spec.memory_hard is not None or spec.memory_soft is not None:
                    cg.set_memory(spec.memory_hard, spec.memory_soft)
                cg.grant_rt(spec.rt_vcpus())
            emulator = spec.emulator_pin or spec.affinity
            if emulator:
                for tid in os.listdir(f"/proc/{pid}/task"):
                    affinity.set_affinity(int(tid), emulator)
        except BaseException:
            self.close()
            raise
        return self

    def place_vcpu(self, index: int, tid: int) -> None:
        """vCPU ``index``'s thread ``tid``: its cgroup, CPUs and scheduler."""
        spec = self.spec
        if self.cgroup is not None:
            self.cgroup.place_vcpu(index, tid)
        if spec.pinned:
            affinity.set_affinity(tid, spec.pin_of(index) or affinity.online_cpus())
        s = spec.sched_of(index)
        if s is not None:
            affinity.set_scheduler(tid, s.scheduler, s.priority)

    def close(self) -> None:
        if self.cgroup is not None:
            self.cgroup.remove(self.pid)
            self.cgroup = None


def release_own() -> None:
    """Remove a cgroup tree someone else (the manager) made for this VMM,
    when it ends: the tree is named after this process and would outlive it."""
    cg = VmCgroup.of_process(os.getpid())
    if cg is not None:
        try:
            cg.remove(os.getpid())
        except Exception:
            pass                  # the next VmCgroup.create on the host sweeps it
