"""A domain's resource tuning and memory backing: libvirt's ``<vcpu
cpuset>``, ``<cputune>``, ``<memtune>`` and ``<memoryBacking>``, read from
XML, written back as ``virsh dumpxml`` lays them out, and turned into the
``kvmkit run`` options that apply them (so a domain and a single
``kvmkit run`` VM go through the same code; see :mod:`kvmkit.host.resources`).

CPU lists are kept as written (``1-3,^2``); their syntax is checked here,
whether the CPUs exist on this host when the domain starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from kvmkit.errors import ConfigError
from kvmkit.manager.reader import Reader
from kvmkit.manager.units import scaled
from kvmkit.manager.xmltree import Node, element

BANDWIDTH = ("period", "quota", "global_period", "global_quota", "emulator_period", "emulator_quota")
MEMTUNE = ("hard_limit", "soft_limit")
RAM_FILE = "guest-ram"            # <source type='file'/>: guest RAM in the run directory


@dataclass(frozen=True)
class DomainTuning:
    cpuset: str | None = None                       # <vcpu cpuset=...>: every thread's default
    vcpupins: tuple[tuple[int, str], ...] = ()
    emulatorpin: str | None = None
    shares: int | None = None
    bandwidth: tuple[tuple[str, int], ...] = ()     # (one of BANDWIDTH, µs)
    vcpusched: tuple[tuple[str, str, int], ...] = ()  # (vcpus, scheduler, priority)
    hard_limit: int | None = None                   # bytes
    soft_limit: int | None = None
    nosharepages: bool = False
    hugepages: bool = False
    source: str | None = None                       # file | anonymous | memfd
    access: str | None = None                       # shared | private
    allocation: str | None = None                   # immediate | ondemand

    def replace(self, **changes) -> "DomainTuning":
        return dataclasses.replace(self, **changes)

    def value(self, name: str) -> int | None:
        return dict(self.bandwidth).get(name)

    def with_value(self, name: str, value: int | None) -> "DomainTuning":
        rest = tuple((k, v) for k, v in self.bandwidth if k != name)
        return self.replace(bandwidth=rest + (((name, value),) if value is not None else ()))

    def pin_of(self, vcpu: int) -> str | None:
        return dict(self.vcpupins).get(vcpu, self.cpuset)


def _cpulist(r: Reader, text: str | None, what: str) -> str | None:
    if text is None:
        return None
    from kvmkit.host.affinity import parse_cpulist
    try:
        parse_cpulist(text, check=False, what=what)
    except ConfigError as e:
        raise r.error(str(e)) from None
    return text


def _int(r: Reader, text: str | None, what: str) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        raise r.error(f"{what} {text!r} is not a whole number") from None


def parse_tuning(r: Reader, vcpus: int) -> DomainTuning:
    """Consume ``cputune``, ``memtune`` and ``memoryBacking`` (and read
    ``vcpu@cpuset``, which the vCPU parser marks as understood)."""
    v = r.node.find("vcpu")
    t = DomainTuning(cpuset=_cpulist(r, v.attrs.get("cpuset") if v is not None else None, "vcpu cpuset"))
    c = r.child("cputune")
    if c is not None:
        pins = []
        for p in c.children("vcpupin"):
            n = _int(p, p.attr("vcpu"), "vcpupin vcpu")
            if n is None or not 0 <= n < vcpus:
                raise p.error(f"vcpupin vcpu {p.node.attrs.get('vcpu')!r}: the domain has {vcpus} vCPUs")
            pins.append((n, _cpulist(p, p.attr("cpuset"), "vcpupin cpuset")))
            p.done()
        e = c.child("emulatorpin")
        emulatorpin = None
        if e is not None:
            emulatorpin = _cpulist(e, e.attr("cpuset"), "emulatorpin cpuset")
            e.done()
        scheds = []
        for s in c.children("vcpusched"):
            scheds.append((_cpulist(s, s.attr("vcpus") or f"0-{vcpus - 1}", "vcpusched vcpus"),
                           s.attr("scheduler", ("fifo", "rr", "other", "batch", "idle"), "other"),
                           _int(s, s.attr("priority"), "vcpusched priority") or 0))
            s.done()
        t = t.replace(vcpupins=tuple(pins), emulatorpin=emulatorpin, vcpusched=tuple(scheds),
                      shares=_int(c, c.child_text("shares"), "cputune shares"),
                      bandwidth=tuple((n, _int(c, c.child_text(n), f"cputune {n}")) for n in BANDWIDTH
                                      if c.node.find(n) is not None))
        c.done()
    m = r.child("memtune")
    if m is not None:
        limits = {}
        for n in MEMTUNE:
            x = m.child(n)
            if x is not None:
                unit = x.attr("unit", default="KiB")
                x.done()
                limits[n] = scaled(x.text, unit)
                if limits[n] is None:
                    raise x.error(f"{x.text!r} {unit} is not a size")
        m.done()
        t = t.replace(**limits)
    b = r.child("memoryBacking")
    if b is not None:
        h = b.child("hugepages")
        if h is not None:
            h.done()                       # <page size=...> children are reported as unsupported
        ns = b.child("nosharepages")
        if ns is not None:
            ns.done()
        src, acc, alloc = b.child("source"), b.child("access"), b.child("allocation")
        t = t.replace(hugepages=h is not None, nosharepages=ns is not None,
                      source=src.attr("type", ("file", "anonymous", "memfd")) if src else None,
                      access=acc.attr("mode", ("shared", "private")) if acc else None,
                      allocation=alloc.attr("mode", ("immediate", "ondemand")) if alloc else None)
        for x in (src, acc, alloc):
            if x is not None:
                x.done()
        b.done()
    return t


# --- back to XML ----------------------------------------------------------------------
def memtune_xml(t: DomainTuning) -> Node | None:
    kids = [element(n, str(getattr(t, n) // 1024), unit="KiB") for n in MEMTUNE if getattr(t, n) is not None]
    return element("memtune", children=kids) if kids else None


def memory_backing_xml(t: DomainTuning) -> Node | None:
    kids = [element("hugepages") if t.hugepages else None, element("nosharepages") if t.nosharepages else None,
            element("source", type=t.source) if t.source else None,
            element("access", mode=t.access) if t.access else None,
            element("allocation", mode=t.allocation) if t.allocation else None]
    return element("memoryBacking", children=kids) if any(kids) else None


def cputune_xml(t: DomainTuning) -> Node | None:
    kids = [element("vcpupin", vcpu=str(v), cpuset=c) for v, c in sorted(t.vcpupins)]
    if t.emulatorpin:
        kids.append(element("emulatorpin", cpuset=t.emulatorpin))
    if t.shares is not None:
        kids.append(element("shares", str(t.shares)))
    kids += [element(n, str(t.value(n))) for n in BANDWIDTH if t.value(n) is not None]
    kids += [element("vcpusched", vcpus=v, scheduler=s, priority=str(p) if s in ("fifo", "rr") else None)
             for v, s, p in t.vcpusched]
    return element("cputune", children=kids) if kids else None


# --- to kvmkit run --------------------------------------------------------------------
def vmm_args(t: DomainTuning, hugetlbfs: str | None = None) -> list[str]:
    """The ``kvmkit run`` options for ``t`` (file-backed RAM goes in the
    run directory, the VMM's working directory)."""
    out: list[str] = []
    if t.cpuset:
        out += ["--cpu-affinity", t.cpuset]
    for v, c in sorted(t.vcpupins):
        out += ["--vcpu-pin", f"{v}:{c}"]
    if t.emulatorpin:
        out += ["--emulator-pin", t.emulatorpin]
    if t.shares is not None:
        out += ["--cpu-shares", str(t.shares)]
    for scope, prefix in (("--vcpu-quota", ""), ("--cpu-quota", "global_"), ("--emulator-quota", "emulator_")):
        q, p = t.value(prefix + "quota"), t.value(prefix + "period")
        if q is not None or p is not None:
            out.append(f"{scope}={q if q is not None and q >= 0 else -1}" + (f"/{p}" if p is not None else ""))
    for v, s, p in t.vcpusched:
        out += ["--vcpu-sched", f"{v}:{s}" + (f":{p}" if s in ("fifo", "rr") else "")]
    if t.hard_limit is not None:
        out += ["--memory-limit", f"{t.hard_limit >> 10}K"]
    if t.soft_limit is not None:
        out += ["--memory-soft-limit", f"{t.soft_limit >> 10}K"]
    if t.nosharepages:
        out += ["--ksm", "off"]
    shared = t.access == "shared"
    if t.hugepages:
        out += ["--mem-path", hugetlbfs] if (t.source == "file" and hugetlbfs) else ["--hugepages"]
        out += ["--mem-shared"] if shared else []
    elif t.source == "file":
        out += ["--mem-file", RAM_FILE + (",share=on" if shared else "")]
    elif shared or t.source == "memfd":
        out += ["--mem-shared"] if shared else []
    if t.allocation == "immediate":
        out.append("--mem-prealloc")
    return out
