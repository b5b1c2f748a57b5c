"""Per-VM control groups on cgroup v2, v1, or the mix most hosts have.

A host may mount each controller in its own v1 hierarchy, all of them in the
v2 unified hierarchy, or some of each (the project's machines: cpu, cpuacct,
cpuset, memory... on v1, and a v2 mount holding only ``hugetlb``).  So the
choice is made per controller: v2 where the unified hierarchy offers it, the
v1 hierarchy that has it otherwise (:func:`discover`).

A VM's tree, as libvirt lays out QEMU's, is created beneath the cgroup the
creating process is in (so a VM started from a service or a sandbox stays
accounted to it)::

    kvmkit-PID-NAME/          cpu.shares / cpu.weight, global quota, memory limit, accounting
        emulator/             every VMM thread that is not a vCPU (main, I/O, QMP); emulator quota
        vcpu0/ vcpu1/ ...     one vCPU thread each; per-vCPU quota, real-time budget

On v2 the children are *threaded* cgroups (only ``cpu`` works per thread;
``memory`` stays on the VM group).  Creating a tree is all or nothing: a
value the kernel refuses removes what was made and raises one line naming
the file and the reason.  :meth:`VmCgroup.remove` puts the threads back and
removes the directories; a tree whose VMM died without removing it is
swept by the next :meth:`VmCgroup.create` on the host.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from kvmkit.errors import HostResourceError

PREFIX = "kvmkit-"
RT_RUNTIME_US = 100_000          # per real-time vCPU: 10% of each second, the host keeps the rest
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class Hierarchy:
    """One mounted hierarchy and where this process sits in it."""

    version: int                  # 1 or 2
    mount: Path
    controllers: frozenset[str]   # v1: bound to it; v2: enabled for our cgroup's children (or ours)
    current: str                  # this process's cgroup, relative to the mount

    @property
    def base(self) -> Path:
        return self.mount / self.current.lstrip("/")


@dataclass(frozen=True)
class CgroupHost:
    """What the host offers, by controller."""

    hierarchies: tuple[Hierarchy, ...]

    def find(self, controller: str) -> Hierarchy | None:
        """The hierarchy to use for ``controller``: v2 first, then v1.  v2's
        ``cpu.stat`` accounts CPU time without any controller, so
        ``cpuacct`` falls back to it."""
        v2 = [h for h in self.hierarchies if h.version == 2]
        for h in v2:
            if controller in h.controllers:
                return h
        for h in self.hierarchies:
            if h.version == 1 and controller in h.controllers:
                return h
        if controller == "cpuacct" and v2:
            return v2[0]
        return None

    def describe(self) -> str:
        parts = []
        for h in self.hierarchies:
            names = ",".join(sorted(h.controllers)) or "no controllers"
            parts.append(f"v{h.version} {h.mount} ({names})")
        return "; ".join(parts) or "no cgroup hierarchy is mounted"

    def require(self, controller: str, why: str) -> Hierarchy:
        h = self.find(controller)
        if h is None:
            raise HostResourceError(f"{why} needs the cgroup '{controller}' controller, which this host "
                                    f"does not offer ({self.describe()})")
        return h


def discover(pid: int | None = None) -> CgroupHost:
    """This process's mounts (``/proc/self/mountinfo``) and the cgroups of
    ``pid`` (default: this process) in them (``/proc/PID/cgroup``)."""
    membership: dict[str, str] = {}        # "cpu,cpuacct" or "" (v2) -> path
    try:
        with open(f"/proc/{pid or 'self'}/cgroup") as f:
            for line in f:
                _, names, path = line.rstrip("\n").split(":", 2)
                membership[names] = path
    except OSError:
        return CgroupHost(())
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            fields, rfields = left.split(), right.split()
            if len(rfields) < 3 or rfields[0] not in ("cgroup", "cgroup2"):
                continue
            root, mount = fields[3], Path(fields[4].replace("\\040", " "))
            if rfields[0] == "cgroup2":
                path = membership.get("")
                if path is None:
                    continue
                current = _relative(path, root)
                ctl = _read(mount / current.lstrip("/") / "cgroup.controllers") or ""
                out.append(Hierarchy(2, mount, frozenset(ctl.split()), current))
                continue
            opts = set(rfields[2].split(","))
            key = next((k for k in membership if k and set(k.split(",")) <= opts), None)
            if key is None or key.startswith("name="):
                continue                    # not ours, or a named hierarchy without controllers
            out.append(Hierarchy(1, mount, frozenset(key.split(",")), _relative(membership[key], root)))
    return CgroupHost(tuple(out))


def _relative(path: str, root: str) -> str:
    if root != "/" and path.startswith(root):
        path = path[len(root):] or "/"
    return path


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _write(path: Path, value: str, what: str | None = None) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise HostResourceError(f"cgroup: {what or 'writing'} {value!r} to {path}: {exc.strerror}") from None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rmtree(path: Path) -> None:
    """Remove a cgroup directory and its children (each must be empty of tasks)."""
    for child in sorted((p for p in path.iterdir() if p.is_dir()), reverse=True):
        _rmtree(child)
    os.rmdir(path)


def sweep(host: CgroupHost) -> list[Path]:
    """Remove the trees of VMMs that died without removing their own."""
    gone = []
    for h in {h.base: h for h in host.hierarchies}.values():
        try:
            entries = list(h.base.iterdir())
        except OSError:
            continue
        for p in entries:
            m = re.match(rf"{PREFIX}(\d+)-", p.name)
            if m and p.is_dir() and not _alive(int(m.group(1))):
                try:
                    _rmtree(p)
                    gone.append(p)
                except OSError:
                    pass            # still has tasks (a pid reused): not ours to touch
    return gone


@dataclass
class VmCgroup:
    """One VM's tree in every hierarchy it needs (see the module docstring)."""

    host: CgroupHost
    dirname: str
    vcpus: int
    dirs: dict[Path, Hierarchy] = field(default_factory=dict)   # VM group -> its hierarchy
    placed: bool = False

    # --- creation ---------------------------------------------------------------------
    @classmethod
    def create(cls, name: str, vcpus: int, controllers: set[str], *, pid: int | None = None,
               host: CgroupHost | None = None) -> "VmCgroup":
        """Make the tree in the hierarchies of ``controllers`` (and always
        one for CPU accounting) and move process ``pid`` (default: this one)
        into it.  Nothing is left behind if any step fails."""
        host = host or discover()
        sweep(host)
        pid = os.getpid() if pid is None else pid
        wanted = {}
        for c in sorted(controllers | {"cpuacct"}):
            h = host.require(c, "this VM's resource settings") if c != "cpuacct" else host.find(c)
            if h is not None:
                wanted.setdefault(h.base, (h, set()))[1].add(c)
        self = cls(host, f"{PREFIX}{pid}-{_SAFE.sub('_', name or 'vm')[:40]}", vcpus)
        try:
            for base, (h, ctls) in wanted.items():
                self._make(h, ctls)
            self.place_process(pid)
        except BaseException:
            self.remove(pid)
            raise
        return self

    def _make(self, h: Hierarchy, controllers: set[str]) -> None:
        vm = h.base / self.dirname
        if h.version == 2:
            need = {c for c in controllers if c in ("cpu", "memory")}
            if need:
                _write(h.base / "cgroup.subtree_control", " ".join(f"+{c}" for c in sorted(need)),
                       "enabling controllers")
        try:
            vm.mkdir()
        except OSError as exc:
            raise HostResourceError(f"cannot create cgroup {vm}: {exc.strerror}") from None
        self.dirs[vm] = h
        per_thread = h.version == 1 or "cpu" in controllers
        if not per_thread:
            return
        if h.version == 1 and "memory" in h.controllers and "cpu" not in h.controllers:
            return                                    # v1 memory: per process, no thread groups
        for child in ["emulator", *(f"vcpu{i}" for i in range(self.vcpus))]:
            (vm / child).mkdir()
            if h.version == 2:
                _write(vm / child / "cgroup.type", "threaded", "making a threaded cgroup")
        if h.version == 2 and "cpu" in controllers:
            _write(vm / "cgroup.subtree_control", "+cpu", "enabling per-thread cpu control")

    def ensure(self, controllers: set[str], pid: int, vcpu_tids: list[int]) -> None:
        """Add the hierarchies of ``controllers`` this tree lacks (a running
        VMM given a new kind of limit) and place ``pid`` and its vCPU threads there."""
        host = discover()
        have = {h.mount for h in self.dirs.values()}
        made = []
        try:
            for c in sorted(controllers):
                h = host.require(c, "this setting")
                if h.mount in have:
                    continue
                before = set(self.dirs)
                self._make(h, {c})
                made += [d for d in self.dirs if d not in before]
                have.add(h.mount)
            for vm in made:
                _write(self._group(vm, "emulator") / "cgroup.procs", str(pid), "moving the VMM into")
                for i, tid in enumerate(vcpu_tids):
                    g = vm / f"vcpu{i}"
                    if g.is_dir():
                        _write(g / ("cgroup.threads" if self.dirs[vm].version == 2 else "tasks"), str(tid),
                               "moving a vCPU into")
        except BaseException:
            for vm in made:
                h = self.dirs.pop(vm)
                try:
                    _write(h.base / "cgroup.procs", str(pid))
                    _rmtree(vm)
                except (OSError, HostResourceError):
                    pass
            raise
        self.host = CgroupHost(tuple(self.dirs.values()))
        self.placed = True

    # --- placing tasks ----------------------------------------------------------------
    def _group(self, vm: Path, child: str) -> Path:
        return vm / child if (vm / child).is_dir() else vm

    def place_process(self, pid: int) -> None:
        """Every thread of ``pid`` into ``emulator`` (or the VM group)."""
        for vm in self.dirs:
            _write(self._group(vm, "emulator") / "cgroup.procs", str(pid), "moving the VMM into")
        self.placed = True

    def place_vcpu(self, index: int, tid: int) -> None:
        """vCPU ``index``'s thread into its own group (where there is one)."""
        for vm, h in self.dirs.items():
            g = vm / f"vcpu{index}"
            if g.is_dir():
                _write(g / ("cgroup.threads" if h.version == 2 else "tasks"), str(tid), "moving a vCPU into")

    # --- limits -----------------------------------------------------------------------
    def _cpu_dir(self, scope: str) -> list[tuple[Path, Hierarchy]]:
        h = self.host.require("cpu", f"cpu {scope} control")
        vm = h.base / self.dirname
        if scope == "global":
            return [(vm, h)]
        if scope == "emulator":
            return [(vm / "emulator", h)]
        return [(vm / f"vcpu{i}", h) for i in range(self.vcpus)]

    def set_shares(self, shares: int) -> None:
        """libvirt's cpu_shares (v1 ``cpu.shares``; v2 ``cpu.weight``, converted as libvirt does)."""
        for d, h in self._cpu_dir("global"):
            if h.version == 1:
                _write(d / "cpu.shares", str(shares), "setting cpu shares")
            else:
                _write(d / "cpu.weight", str(shares_to_weight(shares)), "setting cpu weight")

    def get_shares(self) -> int:
        (d, h), = self._cpu_dir("global")
        if h.version == 1:
            return int((_read(d / "cpu.shares") or "1024").strip())
        return weight_to_shares(int((_read(d / "cpu.weight") or "100").strip()))

    def set_bandwidth(self, scope: str, period_us: int | None, quota_us: int | None) -> None:
        """CFS bandwidth for ``scope`` (global, emulator, vcpu): ``quota_us``
        of CPU per ``period_us``; a quota of -1 (or None with a period) is unlimited."""
        for d, h in self._cpu_dir(scope):
            if h.version == 1:
                if period_us is not None:
                    _write(d / "cpu.cfs_period_us", str(period_us), f"setting the {scope} period")
                if quota_us is not None:
                    _write(d / "cpu.cfs_quota_us", str(quota_us), f"setting the {scope} quota")
            else:
                old_q, old_p = ((_read(d / "cpu.max") or "max 100000").split() + ["100000"])[:2]
                q = old_q if quota_us is None else ("max" if quota_us < 0 else str(quota_us))
                p = old_p if period_us is None else str(period_us)
                _write(d / "cpu.max", f"{q} {p}", f"setting the {scope} bandwidth")

    def get_bandwidth(self, scope: str) -> tuple[int, int]:
        """(period µs, quota µs; -1 unlimited) of ``scope`` (vcpu: vCPU 0's)."""
        d, h = self._cpu_dir(scope)[0]
        if h.version == 1:
            return int(_read(d / "cpu.cfs_period_us") or 100000), int(_read(d / "cpu.cfs_quota_us") or -1)
        q, p = (_read(d / "cpu.max") or "max 100000").split()
        return int(p), -1 if q == "max" else int(q)

    def throttling(self, scope: str = "global") -> dict[str, int]:
        """CFS bandwidth counters of ``scope``: nr_periods, nr_throttled,
        throttled_time (ns; v2's throttled_usec converted)."""
        d, _ = self._cpu_dir(scope)[0]
        stat = dict(ln.split() for ln in (_read(d / "cpu.stat") or "").splitlines() if len(ln.split()) == 2)
        out = {k: int(stat.get(k, 0)) for k in ("nr_periods", "nr_throttled")}
        out["throttled_time"] = int(stat["throttled_time"]) if "throttled_time" in stat else \
            int(stat.get("throttled_usec", 0)) * 1000
        return out

    def grant_rt(self, vcpus: list[int]) -> None:
        """A real-time budget for these vCPUs' groups, where the kernel has
        real-time group scheduling (v1 ``cpu.rt_runtime_us``); without one a
        thread in a child group cannot be made SCHED_FIFO."""
        h = self.host.find("cpu")
        if h is None or h.version != 1 or not vcpus:
            return
        vm = h.base / self.dirname
        if not (vm / "cpu.rt_runtime_us").exists():
            return
        _write(vm / "cpu.rt_runtime_us", str(RT_RUNTIME_US * len(vcpus)), "granting a real-time budget")
        for i in vcpus:
            _write(vm / f"vcpu{i}" / "cpu.rt_runtime_us", str(RT_RUNTIME_US), "granting a real-time budget")

    def set_memory(self, hard: int | None = None, soft: int | None = None) -> None:
        """Memory limits of the whole VMM in bytes (-1: unlimited): ``hard``
        is enforced (reclaim, then the OOM killer); ``soft`` is where reclaim
        starts under host pressure (v1 soft limit; v2 ``memory.high``)."""
        h = self.host.require("memory", "a memory limit")
        vm = h.base / self.dirname
        for value, v1, v2 in ((hard, "memory.limit_in_bytes", "memory.max"),
                              (soft, "memory.soft_limit_in_bytes", "memory.high")):
            if value is None:
                continue
            text = ("-1" if h.version == 1 else "max") if value < 0 else str(value)
            _write(vm / (v1 if h.version == 1 else v2), text, "setting a memory limit")

    def get_memory(self) -> dict[str, int | None]:
        """hard, soft (None: unlimited) and usage in bytes."""
        h = self.host.find("memory")
        if h is None or not (h.base / self.dirname).is_dir():
            return {"hard": None, "soft": None, "usage": None}
        vm = h.base / self.dirname

        def value(name: str) -> int | None:
            text = (_read(vm / name) or "max").strip()
            n = None if text == "max" else int(text)
            return None if n is None or n >= (1 << 62) else n
        if h.version == 1:
            return {"hard": value("memory.limit_in_bytes"), "soft": value("memory.soft_limit_in_bytes"),
                    "usage": value("memory.usage_in_bytes")}
        return {"hard": value("memory.max"), "soft": value("memory.high"), "usage": value("memory.current")}

    # --- accounting -------------------------------------------------------------------
    def cpu_usage(self, child: str | None = None) -> dict[str, int]:
        """CPU time of the VM (or of one child group) in ns: time, user, system."""
        h = self.host.find("cpuacct")
        if h is None:
            return {}
        d = h.base / self.dirname / (child or "")
        if h.version == 1:
            stat = dict(ln.split() for ln in (_read(d / "cpuacct.stat") or "").splitlines() if ln)
            tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
            return {"time": int((_read(d / "cpuacct.usage") or "0").strip()),
                    "user": int(stat.get("user", 0)) * tick, "system": int(stat.get("system", 0)) * tick}
        stat = dict(ln.split() for ln in (_read(d / "cpu.stat") or "").splitlines() if ln)
        return {"time": int(stat.get("usage_usec", 0)) * 1000, "user": int(stat.get("user_usec", 0)) * 1000,
                "system": int(stat.get("system_usec", 0)) * 1000}

    # --- teardown ---------------------------------------------------------------------
    def remove(self, pid: int | None = None) -> None:
        """Move ``pid``'s threads (if it lives) back where they came from and
        remove the tree.  Safe to call twice, and after a partial create."""
        for vm, h in list(self.dirs.items()):
            if pid is not None and _alive(pid) and self.placed:
                try:
                    _write(h.base / "cgroup.procs", str(pid), "moving the VMM back to")
                except HostResourceError:
                    pass
            try:
                _rmtree(vm)
            except FileNotFoundError:
                pass
            except OSError as exc:
                if exc.errno != errno.ENOENT:
                    raise HostResourceError(f"cannot remove cgroup {vm}: {exc.strerror}") from None
            del self.dirs[vm]

    @classmethod
    def of_process(cls, pid: int) -> "VmCgroup | None":
        """The tree a running VMM is in (found from ``/proc/PID/cgroup``): the
        one it made for itself, or its jail's supervisor made for it."""
        host = discover(pid)
        self = None
        for h in host.hierarchies:
            m = re.match(rf"(.*/{PREFIX}\d+-[^/]*)", h.current)    # a jailed VMM's is its supervisor's
            if m is None:
                continue
            vm = h.mount / m.group(1).lstrip("/")
            parent = Hierarchy(h.version, h.mount, h.controllers, str(Path(m.group(1)).parent))
            if self is None:
                self = cls(CgroupHost(()), vm.name, 0)
            self.dirs[vm] = parent
        if self is None:
            return None
        self.host = CgroupHost(tuple(self.dirs.values()))
        self.vcpus = max((sum(1 for p in vm.iterdir() if p.name.startswith("vcpu")) for vm in self.dirs),
                         default=0)
        self.placed = True
        return self


def shares_to_weight(shares: int) -> int:
    """cgroup v1 shares (2-262144) → v2 weight (1-10000), libvirt's mapping."""
    return 1 + ((shares - 2) * 9999) // 262142


def weight_to_shares(weight: int) -> int:
    return 2 + ((weight - 1) * 262142) // 9999
