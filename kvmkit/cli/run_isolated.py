"""``kvmkit run --isolation on``: this process becomes the VMM's supervisor.

It finds every file the VM will use (kernel, initrd, disks and their backing
files, a snapshot to restore), allocates the VM's own uid, builds its jail
(:mod:`kvmkit.host.jail`), opens its taps, hands the disks to the VM's
user, and forks the VMM into the jail, where the rest of ``kvmkit run``
carries on unchanged (paths are the same inside).  Sockets the VMM listens
on are made inside the jail; at the path you asked for there is a symbolic
link to them, so QMP clients, ``virsh console`` and the manager connect as
before.  The supervisor waits, passes SIGTERM/SIGHUP on, reports a VMM that
seccomp killed (naming the syscall), writes ``--exit-file``, and then undoes
all of it: disk owners restored, links and jail removed, uid released.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import stat
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import kvmkit
from kvmkit.errors import ConfigError, KvmkitError
from kvmkit.sizes import parse_size
from kvmkit.host import handover, ids, jail, jail_process
from kvmkit.host.placement import ENV_PLACEMENT, PlacementServer
from kvmkit.host.resources import release_own
from kvmkit.host.seccomp_filter import AuditLog

INNER_EXIT_FILE = "/run/kvmkit/exit.json"        # inside the jail; the supervisor writes the real one


def default_isolation() -> str:
    """``--isolation``'s default: KVMKIT_ISOLATION, else off for ``kvmkit run``.
    The variable jails root's runs only (an explicit ``--isolation on`` by
    another user is an error instead)."""
    setting = jail.isolation_setting("off")
    return setting if os.geteuid() == 0 else "off"


@dataclass
class _Plan:
    binds: list[jail.Bind] = field(default_factory=list)
    sockets: list[str] = field(default_factory=list)      # host paths of sockets the VMM will listen on
    outputs: list[str] = field(default_factory=list)      # host files the VMM writes (bound in, given to the VM user)
    writable: list[str] = field(default_factory=list)     # files handed to the VM's user while it runs
    taps: list = field(default_factory=list)
    shared: list[tuple[str, bool]] = field(default_factory=list)   # directories shared with other VMs (ACL)
    handover: "handover.Handover | None" = None        # what was given to the VM's user, to give back

    def bind(self, path: str, writable: bool = False) -> bool:
        """Bind ``path`` in (False if it does not exist: the VMM, which
        finds it missing in the jail too, then says so as it always does)."""
        path = os.path.abspath(path)
        if any(b.path == path for b in self.binds):
            return True
        if not os.path.exists(path):
            return False
        self.binds.append(jail.Bind(path, writable))
        return True


def run_isolated(args: argparse.Namespace, run_inside: Callable[[argparse.Namespace], int]) -> int:
    """Supervise ``run_inside(args)`` in a jail; its exit status is ours."""
    if os.geteuid() != 0:
        raise ConfigError("--isolation on needs root (it makes namespaces, mounts and device nodes, and "
                          "switches to the VM's own uid); use --isolation off")
    inherited = _open_fds()
    _resolve_guest(args)
    plan = _Plan()
    _collect(args, plan)
    resources = _resources(args)
    handover.take_back_abandoned()          # what VMs whose supervisor was killed left chowned
    lease = ids.allocate()
    plan.handover = handover.handover_for(lease)
    spec = None
    placement = None
    try:
        spec = jail.JailSpec(root=jail.jail_dir() / str(lease.uid), uid=lease.uid, gid=lease.gid,
                             binds=tuple(plan.binds), owned_dirs=_owned_dirs(plan),
                             cwd=os.getcwd(), keep_fds=())
        jail.build(spec)
        _open_taps(args, plan)
        plan.handover.give(plan.writable, plan.shared)    # libvirt's DAC driver does the same
        _link_sockets(spec, plan)
        exit_file, args.exit_file = args.exit_file, INNER_EXIT_FILE
        keep = inherited | {lease.fd} | {t.fd for t in plan.taps}
        if args.incoming and args.incoming.startswith("fd:"):
            keep.add(int(args.incoming[3:]))          # the source's stream, accepted out here
        if resources is not None:
            placement = _apply_outside(*resources)
            keep |= set(placement.child_fds())
        spec = replace(spec, keep_fds=tuple(keep))
        audit = AuditLog()
        try:
            child = jail_process.spawn(spec, lambda: run_inside(args))
            for t in plan.taps:
                t.close()
            if placement is not None:
                placement.forked()
                os.environ.pop(ENV_PLACEMENT, None)
            status = _supervise(child, spec, exit_file, audit, placement)
        finally:
            audit.close()
    finally:
        for t in plan.taps:
            t.close()
        if placement is not None:
            placement.close()
            placement.resources.close()
        release_own()              # a tree a manager made from outside (live schedinfo) while it ran
        _undo(plan, spec)
        lease.release()
    return status


def _resources(args: argparse.Namespace):
    """(ResourceSpec, VM name, vCPUs) when resource options were given,
    checked against the VM out here; they are applied out here too
    (:mod:`kvmkit.host.placement`), so the jailed VMM gets none of them."""
    from kvmkit.cli import run_resources
    from kvmkit.cli.run import DEFAULT_MEMORY
    res = run_resources.resource_spec(args)
    if res is None or args.incoming:
        return None                        # --incoming: the machine (and its size) comes from the stream
    if args.restore:
        from kvmkit.vmm.snapshot import Snapshot
        cfg = Snapshot.open(_restore_dir(args)).config()
        vcpus, memory, name = cfg.cpus, cfg.memory, args.name or cfg.name
    else:
        vcpus, name = args.cpus, args.name
        memory = parse_size(args.memory or DEFAULT_MEMORY, default_unit="M", what="memory size")
    res.validate(vcpus, memory)
    for opt in run_resources.OPTIONS:
        setattr(args, opt, [] if isinstance(getattr(args, opt), list) else None)
    return res, name or "vm", vcpus


def _restore_dir(args: argparse.Namespace) -> str:
    from kvmkit.cli.run import _restore_spec
    return _restore_spec(args.restore)[0]


def _apply_outside(res, name: str, vcpus: int) -> PlacementServer:
    """The VM's cgroup tree, limits and emulator pinning, with this
    process in it: the jail forked from here starts inside (this process
    stays there, idle, as the VMM's part: a manager finds the tree from its
    pid).  vCPU threads are placed as they ask (:class:`PlacementServer`)."""
    from kvmkit.host.resources import VmResources
    server = PlacementServer(VmResources.apply(res, name, vcpus))
    os.environ[ENV_PLACEMENT] = server.env
    return server


def _open_fds() -> set[int]:
    """Descriptors this process was started with (the manager's vmm.lock): the VMM keeps them."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if fd > 2 and not stat.S_ISDIR(os.fstat(fd).st_mode):
                fds.add(fd)
        except OSError:
            pass
    return fds


def _resolve_guest(args: argparse.Namespace) -> None:
    """No --kernel: the fast guest's files, found (or built) out here."""
    if args.kernel is not None or args.restore or args.incoming:
        return
    if args.initrd is not None:
        raise ConfigError("--initrd needs --kernel")
    from kvmkit.guest.assets import fast_guest
    g = fast_guest(build=True)
    args.kernel, args.initrd = str(g.vmlinux), str(g.initrd)
    args.cmdline = args.cmdline if args.cmdline is not None else g.cmdline
    args.memory = args.memory if args.memory is not None else g.memory


def _collect(args: argparse.Namespace, plan: _Plan) -> None:
    from kvmkit.devices.virtio import config as vc
    from kvmkit.vmm.config import SerialSpec
    plan.binds.append(jail.Bind(sys.base_prefix))                       # the Python runtime
    if sys.prefix != sys.base_prefix:
        plan.bind(sys.prefix)
    plan.bind(str(Path(kvmkit.__file__).resolve().parent))             # kvmkit itself
    for lib in ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/share/zoneinfo"):
        if os.path.isdir(lib) and not os.path.islink(lib):
            plan.bind(lib)
    for p in sys.path:            # site-packages elsewhere (not the cwd `python -m` puts first: it is ours)
        if p and p != os.getcwd() and os.path.isdir(p) and not any(p.startswith(b.path + "/") or p == b.path for b in plan.binds):
            plan.bind(p)
    disks = [vc.parse_disk(d) for d in args.disk]
    kernel, initrd = args.kernel, args.initrd
    if args.incoming:
        from kvmkit.cli.run_isolated_incoming import accept
        cfg = accept(args)                           # the stream's machine, its source waiting
        kernel, initrd = str(cfg.kernel), str(cfg.initrd) if cfg.initrd else None
        disks = list(cfg.virtio.disks) if cfg.virtio else []
        _nets_of(args, cfg)
    if args.restore:
        from kvmkit.cli.run import _restore_spec, check_restore_options
        from kvmkit.vmm.snapshot import Snapshot
        check_restore_options(args)                  # the errors of an unjailed run, in its order
        directory, shared = _restore_spec(args.restore)
        snap = Snapshot.open(directory)
        plan.bind(directory, writable=shared)
        plan.shared.append((os.path.abspath(directory), shared))
        cfg = snap.config()
        kernel, initrd = str(cfg.kernel), str(cfg.initrd) if cfg.initrd else None
        disks = list(cfg.virtio.disks) if cfg.virtio else []
        _nets_of(args, cfg)
    for path in (kernel, initrd):
        if path:
            plan.bind(path)
    for d in disks:
        chain = _chain(d.path)
        if plan.bind(chain[0], writable=not d.readonly) and not d.readonly:
            plan.writable.append(chain[0])
        for backing in chain[1:]:
            plan.bind(backing)
    serial = SerialSpec.parse(args.serial)
    if serial.kind == "unix":
        plan.sockets.append(os.path.abspath(serial.path))
    elif serial.kind == "file":
        plan.outputs.append(os.path.abspath(serial.path))
    for q in args.qmp:
        from kvmkit.cli.qmp import parse_qmp_address
        a = parse_qmp_address(q)
        if a.kind == "unix":
            plan.sockets.append(os.path.abspath(a.path))
    if args.vsock:
        plan.sockets.append(os.path.abspath(vc.parse_vsock(args.vsock).uds))
    if args.virtio_console:
        out = vc.parse_console(args.virtio_console).out
        if out:
            plan.outputs.append(os.path.abspath(out))
    if args.profile:
        plan.outputs.append(os.path.abspath(args.profile))
    if args.mem_file:                            # guest RAM the host (or another process) maps too
        from kvmkit.cli.run_resources import path_and_switch
        plan.outputs.append(os.path.abspath(path_and_switch(args.mem_file, "--mem-file", "share", "a path")[0]))
    for directory in args.jail_bind:
        if not os.path.isdir(directory):
            raise ConfigError(f"--jail-bind {directory}: not a directory")
        plan.bind(directory, writable=True)
        plan.writable.append(os.path.abspath(directory))
    for out in plan.outputs:
        _touch(out)
        plan.bind(out, writable=True)
        plan.writable.append(out)


def _nets_of(args: argparse.Namespace, cfg) -> None:
    """A snapshot's or a stream's NICs: their taps are opened out here by
    name (:func:`_open_taps`), as for a boot, and handed to the machine."""
    if not (cfg.virtio and cfg.virtio.nets):
        return
    if any(n.tap is None for n in cfg.virtio.nets):
        raise ConfigError("--isolation on: this machine's NICs do not name their taps (saved by an older kvmkit "
                          "from handed-over descriptors); use --isolation off")
    args.net = [",".join(f"{k}={v}" for k, v in (("tap", n.tap), ("mac", n.mac), ("bridge", n.bridge)) if v)
                for n in cfg.virtio.nets]
    args.restore_nets = cfg.virtio.nets


def _chain(path: str) -> list[str]:
    """An image and its backing files, top first (all must be in the jail)."""
    from kvmkit.block.image import open_image
    from kvmkit.block.info import image_info
    chain = [os.path.abspath(path)]
    while len(chain) < 64:
        try:
            img = open_image(chain[-1], readonly=True)
        except KvmkitError:
            break                                # the VMM reports it, with the option it came from
        try:
            backing = image_info(img).get("full-backing-filename")
        finally:
            img.close()
        if not backing:
            break
        chain.append(os.path.abspath(backing))
    return chain


def _touch(path: str) -> None:
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create it: {exc.strerror}") from None


def _owned_dirs(plan: _Plan) -> tuple[str, ...]:
    dirs = {os.getcwd(), os.path.dirname(INNER_EXIT_FILE)} | {os.path.dirname(s) for s in plan.sockets}
    return tuple(sorted(dirs))


def _open_taps(args: argparse.Namespace, plan: _Plan) -> None:
    """Taps are opened here, in the host's network namespace where bridges
    see them, and joined to their bridges here (the jailed VMM has neither
    the bridge in its namespace nor the capability); the VMM gets only the
    descriptors (``--net fd=N``)."""
    from kvmkit.devices.virtio import config as vc
    from kvmkit.net.tap import Tap
    nets = []
    for text in args.net:
        n = vc.parse_net(text)
        tap = Tap.open_for_nic(n.tap, n.bridge)
        plan.taps.append(tap)
        os.set_inheritable(tap.fd, True)
        nets.append(f"fd={tap.fd},tap={tap.name}" + (f",mac={n.mac}" if n.mac else "")
                    + (f",bridge={n.bridge}" if n.bridge else ""))     # named: a snapshot records them
    if getattr(args, "restore_nets", None):   # a restore takes its machine from the snapshot: its NICs get the fds
        from dataclasses import replace as _replace
        args.restore_nets = tuple(_replace(n, fd=t.fd) for n, t in zip(args.restore_nets, plan.taps))
        args.net = []
    else:
        args.net = nets


def _link_sockets(spec: jail.JailSpec, plan: _Plan) -> None:
    for path in plan.sockets:
        if os.path.islink(path) or (os.path.exists(path) and stat.S_ISSOCK(os.lstat(path).st_mode)):
            os.unlink(path)
        try:
            os.symlink(jail._inside(spec.root, path), path)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot make the socket's link: {exc.strerror}") from None


def _supervise(child: jail_process.JailedProcess, spec: jail.JailSpec, exit_file: str | None,
               audit: AuditLog, placement: PlacementServer | None = None) -> int:
    for s in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, lambda sig, _frame: child.signal(sig))
    signal.signal(signal.SIGINT, signal.SIG_IGN)         # the terminal sends Ctrl-C to the VMM too
    if placement is not None:
        placement.serve(os.getpid(), child.status_fd)
    code, sig = child.wait()
    record = None
    if sig is not None:
        if sig == signal.SIGSYS:
            name = audit.killed_by(spec.uid)
            error = f"killed by seccomp: syscall {name or '(unknown: no audit record)'}"
        else:
            error = f"killed by signal {signal.Signals(sig).name}"
        print(f"kvmkit run: error: the VMM was {error}", file=sys.stderr)
        record = {"reason": "error", "status": 1, "error": f"the VMM was {error}"}
        status = 1
    else:
        status = code
        try:
            record = json.loads(jail._inside(spec.root, INNER_EXIT_FILE).read_text())
        except (OSError, ValueError):
            record = None
    if exit_file and record is not None:
        from kvmkit.manager import files
        files.atomic_write(Path(exit_file), json.dumps(record))
    return status


def _undo(plan: _Plan, spec: jail.JailSpec | None) -> None:
    if plan.handover is not None:
        plan.handover.take_back()
    if spec is not None:
        for path in plan.sockets:
            if os.path.islink(path) and os.readlink(path).startswith(str(spec.root) + "/"):
                os.unlink(path)
        jail.remove(spec)
