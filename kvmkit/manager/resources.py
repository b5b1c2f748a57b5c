"""The manager's resource commands on :class:`kvmkit.Host`: ``vcpupin``,
``emulatorpin``, ``schedinfo``, ``memtune``, ``setmaxmem``, ``domstats``
and the host's figures for ``nodeinfo`` / ``node-memory-tune``.

A running domain is changed from outside its VMM, as libvirt changes QEMU:
the vCPU thread ids come from QMP ``query-cpus-fast``, the cgroup tree
from ``/proc/PID/cgroup`` (made now if the domain started without one);
the live XML is rewritten to say what was set.  ``--config`` changes the
stored definition, which the next start applies through ``kvmkit run``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from kvmkit.errors import ConfigError, KvmkitError
from kvmkit.host import affinity, ksm
from kvmkit.host.cgroups import VmCgroup
from kvmkit.host.jail_process import host_tids, vmm_pid
from kvmkit.manager import files
from kvmkit.manager.domain_xml import domain_xml
from kvmkit.manager.errors import OperationFailed, OperationInvalid, XmlError
from kvmkit.manager.locks import locked
from kvmkit.manager.tuning import DomainTuning
from kvmkit.manager.vmmlink import qmp

SCHED_PARAMS = ("cpu_shares", "vcpu_period", "vcpu_quota", "emulator_period", "emulator_quota",
                "global_period", "global_quota")
_XML_NAME = {"vcpu_period": "period", "vcpu_quota": "quota"}
DEFAULT_PERIOD = 100_000
STATE_CODES = {"running": 1, "paused": 3, "shut off": 5, "in shutdown": 4}
REASON_CODES = {"booted": 1, "unpaused": 5, "user": 1, "shutdown": 1, "destroyed": 2, "crashed": 3,
                "failed": 6, "unknown": 0}


def _which(info, live: bool | None, config: bool | None) -> tuple[bool, bool]:
    """virsh's --live/--config/--current: by default whichever applies now."""
    if not live and not config:
        return info.active, not info.active
    if live and not info.active:
        raise OperationInvalid("domain is not running")
    return bool(live), bool(config)


class ResourceCommands:
    """Mixed into :class:`kvmkit.manager.host.Host`."""

    # --- plumbing ---------------------------------------------------------------------
    def _vmm(self, name: str):
        info = self.lookup(name)
        rd = self._rd(info.name)
        if not rd.alive():
            raise OperationInvalid("domain is not running")
        pid = rd.pid(wait=2.0)
        if pid is None:
            raise OperationFailed("the VMM's pid is unknown")
        return info, rd, vmm_pid(pid)             # jailed: the VMM, not its supervisor

    def _vcpu_tids(self, rd, pid: int) -> list[int]:
        cpus = qmp(rd.qmp_socket, "query-cpus-fast")
        tids = host_tids(pid, [int(c["thread-id"]) for c in sorted(cpus, key=lambda c: c["cpu-index"])])
        if any(t == vmm_pid(pid) for t in tids):
            raise OperationFailed("the VMM's vCPU threads have not started yet")
        return tids

    def _cgroup(self, info, rd, pid: int, controllers: set[str]) -> VmCgroup:
        tids = self._vcpu_tids(rd, pid)
        owner = rd.pid() or pid            # a jail's supervisor: in the tree too, and removes it at the end
        cg = VmCgroup.of_process(pid)
        if cg is None:
            cg = VmCgroup.create(info.name, len(tids), controllers, pid=owner)
            if owner != pid:
                cg.place_process(pid)
            for i, tid in enumerate(tids):
                cg.place_vcpu(i, tid)
        else:
            cg.ensure(controllers, pid, tids)
            if owner != pid:
                cg.place_process(owner)
        return cg

    def _save_tuning(self, info, live: bool, config: bool, change) -> None:
        """Record a change (a function DomainTuning -> DomainTuning) in the
        live XML and/or the stored definition."""
        if live:
            d = info.definition
            files.atomic_write(self._rd(info.name).live_xml,
                               domain_xml(d.replace(tuning=change(d.tuning)), domain_id=info.id))
        if config:
            if not info.persistent:
                raise OperationInvalid("transient domains do not have any persistent config")
            with locked(self.sd.domain_lock(info.name), f"domain '{info.name}'"), self.store.host_lock():
                d = self.store.load(info.name)
                self.store.save(d.replace(tuning=change(d.tuning)))

    def _definition(self, info, config: bool):
        return self.store.load(info.name) if config and info.persistent else info.definition

    # --- pinning ----------------------------------------------------------------------
    def vcpu_pins(self, name: str, config: bool = False) -> list[tuple[int, str]]:
        """(vCPU, CPU list) for every vCPU: the threads' affinity while
        running, else what the definition says."""
        info = self.lookup(name)
        everything = affinity.format_cpulist(affinity.online_cpus())
        if info.active and not config:
            _, rd, pid = self._vmm(name)
            return [(i, affinity.format_cpulist(affinity.get_affinity(t)))
                    for i, t in enumerate(self._vcpu_tids(rd, pid))]
        d = self._definition(info, True)
        return [(i, d.tuning.pin_of(i) or everything) for i in range(d.vcpus)]

    def vcpu_pin(self, name: str, vcpu: int, cpulist: str, live: bool | None = None,
                 config: bool | None = None) -> None:
        info = self.lookup(name)
        live, config = _which(info, live, config)
        d = self._definition(info, config)
        if not 0 <= vcpu < d.vcpus:
            raise ConfigError(f"vcpu {vcpu} is out of range of the domain's {d.vcpus} vCPUs")
        cpus = affinity.parse_cpulist(cpulist, what="cpulist")
        if live:
            _, rd, pid = self._vmm(name)
            affinity.set_affinity(self._vcpu_tids(rd, pid)[vcpu], cpus)

        def change(t: DomainTuning) -> DomainTuning:
            return t.replace(vcpupins=tuple(sorted({**dict(t.vcpupins), vcpu: cpulist}.items())))
        self._save_tuning(info, live, config, change)

    def emulator_pin_info(self, name: str, config: bool = False) -> str:
        info = self.lookup(name)
        if info.active and not config:
            _, _, pid = self._vmm(name)
            return affinity.format_cpulist(affinity.get_affinity(pid))
        t = self._definition(info, True).tuning
        return t.emulatorpin or t.cpuset or affinity.format_cpulist(affinity.online_cpus())

    def emulator_pin(self, name: str, cpulist: str, live: bool | None = None, config: bool | None = None) -> None:
        info = self.lookup(name)
        live, config = _which(info, live, config)
        cpus = affinity.parse_cpulist(cpulist, what="cpulist")
        if live:
            _, rd, pid = self._vmm(name)
            vcpus = set(self._vcpu_tids(rd, pid))
            for p in {pid, rd.pid() or pid}:   # jailed: the supervisor is the VMM's part too
                for tid in map(int, os.listdir(f"/proc/{p}/task")):
                    if tid in vcpus or _comm(p, tid).startswith("kvm"):
                        continue               # vCPUs keep their pins; KVM's kernel workers are the kernel's
                    affinity.set_affinity(tid, cpus)
        self._save_tuning(info, live, config, lambda t: t.replace(emulatorpin=cpulist))

    # --- CPU scheduling ---------------------------------------------------------------
    def schedinfo(self, name: str, config: bool = False) -> dict[str, int]:
        info = self.lookup(name)
        if info.active and not config:
            _, _, pid = self._vmm(name)
            cg = VmCgroup.of_process(pid)
            out = {"cpu_shares": 1024}
            for scope in ("vcpu", "emulator", "global"):
                out[f"{scope}_period"], out[f"{scope}_quota"] = DEFAULT_PERIOD, -1
            if cg is not None and any("cpu" in h.controllers for h in cg.dirs.values()):
                out["cpu_shares"] = cg.get_shares()
                for scope in ("vcpu", "emulator", "global"):
                    out[f"{scope}_period"], out[f"{scope}_quota"] = cg.get_bandwidth(scope)
            return out
        t = self._definition(info, True).tuning
        out = {"cpu_shares": t.shares if t.shares is not None else 1024}
        for p in SCHED_PARAMS[1:]:
            v = t.value(_XML_NAME.get(p, p))
            out[p] = v if v is not None else (DEFAULT_PERIOD if p.endswith("period") else -1)
        return out

    def set_schedinfo(self, name: str, params: dict[str, int], live: bool | None = None,
                      config: bool | None = None) -> None:
        from kvmkit.host.resources import Bandwidth, ResourceSpec
        info = self.lookup(name)
        live, config = _which(info, live, config)
        bad = sorted(set(params) - set(SCHED_PARAMS))
        if bad:
            raise ConfigError(f"invalid scheduler parameter '{bad[0]}' (known: {', '.join(SCHED_PARAMS)})")
        bw = []
        for scope in ("vcpu", "emulator", "global"):
            p, q = params.get(f"{scope}_period"), params.get(f"{scope}_quota")
            if p is not None or q is not None:
                bw.append((scope, Bandwidth(p, q)))
        ResourceSpec(shares=params.get("cpu_shares"), bandwidth=tuple(bw)).validate(1, 0)
        if live:
            i, rd, pid = self._vmm(name)
            cg = self._cgroup(i, rd, pid, {"cpu"})
            if "cpu_shares" in params:
                cg.set_shares(params["cpu_shares"])
            for scope, b in bw:
                cg.set_bandwidth(scope, b.period, b.quota)

        def change(t: DomainTuning) -> DomainTuning:
            if "cpu_shares" in params:
                t = t.replace(shares=params["cpu_shares"])
            for k, v in params.items():
                if k != "cpu_shares":
                    t = t.with_value(_XML_NAME.get(k, k), v)
            return t
        self._save_tuning(info, live, config, change)

    # --- memory -----------------------------------------------------------------------
    def memtune(self, name: str, config: bool = False) -> dict[str, int | None]:
        """hard_limit and soft_limit in bytes (None: unlimited)."""
        info = self.lookup(name)
        if info.active and not config:
            _, _, pid = self._vmm(name)
            cg = VmCgroup.of_process(pid)
            got = cg.get_memory() if cg is not None else {}
            return {"hard_limit": got.get("hard"), "soft_limit": got.get("soft")}
        t = self._definition(info, True).tuning
        return {"hard_limit": t.hard_limit, "soft_limit": t.soft_limit}

    def set_memtune(self, name: str, hard: int | None = None, soft: int | None = None,
                    live: bool | None = None, config: bool | None = None) -> None:
        info = self.lookup(name)
        live, config = _which(info, live, config)
        memory = self._definition(info, config).memory
        for what, v in (("hard_limit", hard), ("soft_limit", soft)):
            if v is not None and v != -1 and v < memory:
                raise ConfigError(f"{what} {v >> 10} KiB is below the domain's memory ({memory >> 10} KiB)")
        if live:
            i, rd, pid = self._vmm(name)
            self._cgroup(i, rd, pid, {"memory"}).set_memory(hard, soft)

        def change(t: DomainTuning) -> DomainTuning:
            for k, v in (("hard_limit", hard), ("soft_limit", soft)):
                if v is not None:
                    t = t.replace(**{k: None if v == -1 else v})
            return t
        self._save_tuning(info, live, config, change)

    def setmaxmem(self, name: str, size: int, live: bool | None = None, config: bool | None = None) -> None:
        """``virsh setmaxmem``: the domain's <memory> (config only: a running
        VM's RAM is mapped once, as QEMU's is without hotplug)."""
        from kvmkit.manager.domain_parse import MIN_MEMORY
        info = self.lookup(name)
        live, config = _which(info, live, config)
        if live:
            raise OperationInvalid("cannot resize the maximum memory on an active domain")
        if size < MIN_MEMORY:
            raise ConfigError(f"memory {size >> 10} KiB is below kvmkit's minimum of {MIN_MEMORY >> 10} KiB")
        with locked(self.sd.domain_lock(info.name), f"domain '{info.name}'"), self.store.host_lock():
            d = self.store.load(info.name)
            if d.tuning.hard_limit is not None and d.tuning.hard_limit < size:
                raise ConfigError(f"memory {size >> 10} KiB is above the domain's hard_limit "
                                  f"({d.tuning.hard_limit >> 10} KiB)")
            self.store.save(d.replace(memory=size, current_memory=min(d.current_memory, size)))

    # --- statistics -------------------------------------------------------------------
    def domstats(self, name: str, groups: set[str] | None = None) -> list[tuple[str, Any]]:
        """virsh domstats' fields for one domain (all groups by default)."""
        info = self.lookup(name)
        want = groups or {"state", "cpu-total", "balloon", "vcpu", "interface", "block", "kvmkit"}
        out: list[tuple[str, Any]] = []
        if "state" in want:
            out += [("state.state", STATE_CODES.get(info.state, 0)), ("state.reason", REASON_CODES.get(info.reason, 0))]
        if not info.active:
            return out
        _, rd, pid = self._vmm(name)
        d = info.definition
        cg = VmCgroup.of_process(pid)
        tids = self._vcpu_tids(rd, pid)
        if "cpu-total" in want:
            usage = cg.cpu_usage() if cg is not None else {}
            if not usage:
                usage = _proc_cpu(pid)
            out += [("cpu.time", usage["time"]), ("cpu.user", usage["user"]), ("cpu.system", usage["system"])]
        if "balloon" in want:
            actual = d.memory
            if d.balloon:
                try:
                    actual = int(qmp(rd.qmp_socket, "query-balloon")["actual"])
                except KvmkitError:
                    pass
            out += [("balloon.current", actual >> 10), ("balloon.maximum", d.memory >> 10),
                    ("balloon.rss", _status_kib(pid, "VmRSS"))]
        if "vcpu" in want:
            out += [("vcpu.current", len(tids)), ("vcpu.maximum", d.vcpus)]
            for i, tid in enumerate(tids):
                try:
                    ns = int(affinity.thread_cpu_time(pid, tid) * 1e9)
                except OSError:
                    ns = 0
                out += [(f"vcpu.{i}.state", 1), (f"vcpu.{i}.time", ns)]
        if "interface" in want:
            taps = [nic.target for nic in d.interfaces]
            out.append(("net.count", len(taps)))
            for i, tap in enumerate(taps):
                out += _net_stats(i, tap)
        if "block" in want:
            blocks = qmp(rd.qmp_socket, "query-block")
            out.append(("block.count", len(blocks)))
            for i, (disk, b) in enumerate(zip(d.disks, blocks)):
                s = b.get("stats", {})
                size = b.get("inserted", {}).get("image", {}).get("virtual-size", 0)
                try:
                    st = os.stat(disk.source)
                    alloc, phys = st.st_blocks * 512, st.st_size
                except OSError:
                    alloc = phys = 0
                out += [(f"block.{i}.name", disk.target), (f"block.{i}.path", disk.source),
                        (f"block.{i}.rd.reqs", s.get("rd_operations", 0)), (f"block.{i}.rd.bytes", s.get("rd_bytes", 0)),
                        (f"block.{i}.wr.reqs", s.get("wr_operations", 0)), (f"block.{i}.wr.bytes", s.get("wr_bytes", 0)),
                        (f"block.{i}.fl.reqs", s.get("flush_operations", 0)),
                        (f"block.{i}.allocation", alloc), (f"block.{i}.capacity", size),
                        (f"block.{i}.physical", phys)]
        if "kvmkit" in want:
            mem = cg.get_memory() if cg is not None else {}
            if mem.get("usage") is not None:
                out.append(("kvmkit.memory.cgroup_usage", mem["usage"] >> 10))
            mine = ksm.process_figures(pid)
            out.append(("kvmkit.ksm.merging_pages", mine.get("ksm_merging_pages", 0)))
            host = ksm.host_figures()
            out += [(f"kvmkit.ksm.host.{k}", host[k]) for k in ("run", "pages_shared", "pages_sharing") if k in host]
        return out


def _comm(pid: int, tid: int) -> str:
    try:
        return Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return ""


def _proc_cpu(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]) * tick, int(fields[12]) * tick
    return {"time": user + system, "user": user, "system": system}


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _net_stats(i: int, tap: str | None) -> list[tuple[str, Any]]:
    """A NIC's counters from its tap, from the guest's side (the tap's tx is
    the guest's rx), as libvirt reports them."""
    base = Path(f"/sys/class/net/{tap}/statistics") if tap else None

    def n(name: str) -> int:
        try:
            return int((base / name).read_text()) if base else 0
        except OSError:
            return 0
    return [(f"net.{i}.name", tap or ""),
            (f"net.{i}.rx.bytes", n("tx_bytes")), (f"net.{i}.rx.pkts", n("tx_packets")),
            (f"net.{i}.rx.errs", n("tx_errors")), (f"net.{i}.rx.drop", n("tx_dropped")),
            (f"net.{i}.tx.bytes", n("rx_bytes")), (f"net.{i}.tx.pkts", n("rx_packets")),
            (f"net.{i}.tx.errs", n("rx_errors")), (f"net.{i}.tx.drop", n("rx_dropped"))]


def node_info() -> list[tuple[str, Any]]:
    """``virsh nodeinfo``, with the host's KSM figures after libvirt's lines."""
    cpus = len(affinity.online_cpus())
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    mhz = 0
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("cpu MHz"):
                mhz = int(float(line.split(":")[1]))
                break
    except OSError:
        pass
    k = ksm.host_figures()
    out: list[tuple[str, Any]] = [
        ("CPU model", os.uname().machine), ("CPU(s)", cpus), ("CPU frequency", f"{mhz} MHz"),
        ("CPU socket(s)", 1), ("Core(s) per socket", cpus), ("Thread(s) per core", 1), ("NUMA cell(s)", 1),
        ("Memory size", f"{mem_kib} KiB")]
    if k:
        out += [("KSM running", "yes" if k.get("run") == 1 else "no"),
                ("KSM pages shared", k.get("pages_shared", 0)), ("KSM pages sharing", k.get("pages_sharing", 0))]
    return out


NODE_MEMORY = ("pages_to_scan", "sleep_millisecs", "pages_shared", "pages_sharing", "pages_unshared",
               "pages_volatile", "full_scans", "merge_across_nodes")


def node_memory_tune(set_values: dict[str, int] | None = None) -> list[tuple[str, int]]:
    """``virsh node-memory-tune``: the host's KSM knobs and figures
    (``shm_`` names, as libvirt's); ``set_values`` writes the knobs first."""
    for key, value in (set_values or {}).items():
        if key not in ("pages_to_scan", "sleep_millisecs", "merge_across_nodes"):
            raise XmlError(f"unknown parameter '{key}'")
        try:
            (ksm.KSM / key).write_text(str(value))
        except OSError as e:
            raise OperationFailed(f"cannot set {key} to {value}: {e.strerror}") from None
    k = ksm.host_figures()
    return [(f"shm_{n}", k[n]) for n in NODE_MEMORY if n in k]
