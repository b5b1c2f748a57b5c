"""``kvmkit run``'s resource-control and guest-memory options: parsed into a
:class:`kvmkit.host.resources.ResourceSpec` and a
:class:`kvmkit.memory.backing.MemoryBacking` (the manager's domain XML
becomes the same options, so both paths are one)."""

from __future__ import annotations

import argparse

from kvmkit.errors import ConfigError
from kvmkit.sizes import parse_size


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "resource control", "pinning by thread affinity; shares, CPU bandwidth and memory limits in a cgroup "
        "of the VM's own (cgroup v2 where the host offers the controller, v1 otherwise), removed when it ends")
    g.add_argument("--cpu-affinity", metavar="CPUS",
                   help="run every VMM thread on these host CPUs, e.g. 0-1 or 0,2 (libvirt's <vcpu cpuset>)")
    g.add_argument("--vcpu-pin", action="append", default=[], metavar="VCPU:CPUS",
                   help="pin one vCPU's thread to host CPUs, e.g. 0:1 (repeatable; libvirt's <vcpupin>)")
    g.add_argument("--emulator-pin", metavar="CPUS",
                   help="host CPUs for the VMM's other threads (main, I/O, monitor; libvirt's <emulatorpin>)")
    g.add_argument("--cpu-shares", type=int, metavar="N",
                   help="relative CPU weight against other VMs, 2-262144 (default 1024; libvirt's <shares>)")
    g.add_argument("--cpu-quota", metavar="LIMIT",
                   help="CPU bandwidth of the whole VM: 20%% (of one host CPU), or QUOTA[/PERIOD] in µs "
                        "(libvirt's <global_quota>/<global_period>)")
    g.add_argument("--vcpu-quota", metavar="LIMIT", help="the same for each vCPU thread (libvirt's <quota>/<period>)")
    g.add_argument("--emulator-quota", metavar="LIMIT",
                   help="the same for the VMM's other threads (libvirt's <emulator_quota>)")
    g.add_argument("--memory-limit", metavar="SIZE",
                   help="hard limit on the VMM's memory, guest RAM included (at least the guest's RAM; "
                        "the Python VMM itself needs some 40 MiB more; libvirt's <memtune><hard_limit>)")
    g.add_argument("--memory-soft-limit", metavar="SIZE", help="where reclaim starts under host memory pressure")
    g.add_argument("--vcpu-sched", action="append", default=[], metavar="VCPUS:SCHED[:PRIO]",
                   help="scheduler of vCPU threads: fifo or rr with a real-time priority 1-99 (needs "
                        "CAP_SYS_NICE; kvmkit grants its cgroup a 10%% real-time budget per vCPU where the "
                        "kernel has RT group scheduling), or other/batch/idle; e.g. 0:fifo:10")
    m = p.add_argument_group("guest memory", "how guest RAM is backed (libvirt's <memoryBacking>)")
    m.add_argument("--ksm", choices=("on", "off"), default="on",
                   help="let the host's KSM merge identical guest pages across VMs (MADV_MERGEABLE; default "
                        "on, as libvirt's; ksmd itself runs only if /sys/kernel/mm/ksm/run is 1)")
    m.add_argument("--hugepages", action="store_true",
                   help="guest RAM on the host's reserved huge pages (MAP_HUGETLB; reserve them first: "
                        "echo N > /proc/sys/vm/nr_hugepages)")
    m.add_argument("--mem-path", metavar="DIR",
                   help="guest RAM in an unlinked file in DIR, a hugetlbfs mount (QEMU's -mem-path)")
    m.add_argument("--mem-file", metavar="PATH[,share=on]",
                   help="guest RAM backed by the file PATH (created or grown to the RAM size); share=on "
                        "writes guest memory through to it (other processes mapping it see the guest's RAM); "
                        "put it on tmpfs (/dev/shm) or hugetlbfs: on a disk, writeback makes the guest slow")
    m.add_argument("--mem-shared", action="store_true",
                   help="shared anonymous guest RAM (a memfd: what vhost-user backends map)")
    m.add_argument("--mem-prealloc", action="store_true",
                   help="fault all of guest RAM in before the guest starts (fails at start, not later, "
                        "when the host cannot hold it)")


def _cpus(text: str | None, what: str):
    if text is None:
        return None
    from kvmkit.host.affinity import parse_cpulist
    return parse_cpulist(text, what=what)


def resource_spec(args: argparse.Namespace):
    """The options as a ResourceSpec (None when none was given)."""
    from kvmkit.host import resources as r
    bandwidth = tuple((scope, r.parse_bandwidth(text, opt)) for scope, text, opt in (
        ("global", args.cpu_quota, "--cpu-quota"), ("vcpu", args.vcpu_quota, "--vcpu-quota"),
        ("emulator", args.emulator_quota, "--emulator-quota")) if text is not None)
    size = lambda t, what: None if t is None else parse_size(t, default_unit="M", what=what)  # noqa: E731
    spec = r.ResourceSpec(
        affinity=_cpus(args.cpu_affinity, "--cpu-affinity"),
        vcpu_pins=tuple(r.parse_vcpu_pin(t) for t in args.vcpu_pin),
        emulator_pin=_cpus(args.emulator_pin, "--emulator-pin"),
        shares=args.cpu_shares, bandwidth=bandwidth,
        memory_hard=size(args.memory_limit, "--memory-limit"),
        memory_soft=size(args.memory_soft_limit, "--memory-soft-limit"),
        vcpu_sched=tuple(r.parse_vcpu_sched(t) for t in args.vcpu_sched))
    return None if spec.empty else spec


def memory_backing(args: argparse.Namespace):
    """The guest-memory options as a MemoryBacking (None: the default)."""
    from kvmkit.memory.backing import MemoryBacking
    given = [o for o, on in (("--hugepages", args.hugepages), ("--mem-path", args.mem_path),
                             ("--mem-file", args.mem_file)) if on]
    if len(given) > 1 and given != ["--hugepages", "--mem-path"]:
        raise ConfigError(f"{' and '.join(given)} cannot be given together (one backing for guest RAM)")
    mergeable = args.ksm == "on"
    if args.mem_file:
        path, shared = path_and_switch(args.mem_file, "--mem-file", "share", "a path")
        b = MemoryBacking("file", path, shared=shared or args.mem_shared, mergeable=mergeable,
                          prealloc=args.mem_prealloc)
    elif args.hugepages or args.mem_path:
        b = MemoryBacking("hugepages", args.mem_path, shared=args.mem_shared, mergeable=mergeable,
                          prealloc=args.mem_prealloc)
    else:
        b = MemoryBacking(shared=args.mem_shared, mergeable=mergeable, prealloc=args.mem_prealloc)
    return None if b == MemoryBacking() else b


def path_and_switch(text: str, option: str, key: str, missing: str) -> tuple[str, bool]:
    """``PATH[,KEY=on|off]``, as ``--mem-file`` and ``--restore`` take it."""
    path, _, opts = text.partition(",")
    on = False
    for opt in (o for o in opts.split(",") if o):
        name, _, value = opt.partition("=")
        if name != key or value not in ("on", "off"):
            raise ConfigError(f"{option} {text}: unknown option {opt!r} (known: {key}=on|off)")
        on = value == "on"
    if not path:
        raise ConfigError(f"{option}: {missing} is required")
    return path, on


OPTIONS = ("cpu_affinity", "vcpu_pin", "emulator_pin", "cpu_shares", "cpu_quota", "vcpu_quota", "emulator_quota",
           "memory_limit", "memory_soft_limit", "vcpu_sched")
