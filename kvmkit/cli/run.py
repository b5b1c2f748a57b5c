"""``kvmkit run``: boot a guest and stay with it until it ends.

Exit statuses: 0 the guest powered off (or you quit with Ctrl-a x / QMP
quit); 32 the guest rebooted; 33 the guest triple-faulted; 1 the VMM stopped
on an error; (N << 1) | 1 when a guest wrote N to the debug-exit port 0xF4.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from typing import Any

from kvmkit.errors import ConfigError, host_error
from kvmkit.sizes import parse_size
from kvmkit.vmm.api import ExitReason

log = logging.getLogger("kvmkit.run")

INIT_DIED = b"Attempted to kill init"
FAST_PROMPT = b"root@kvmkit:~# "   # the fast guest's shell prompt: where the start cache saves it
DEFAULT_MEMORY = "512M"         # for a kernel you bring; kvmkit's guests say what they need
MAX_PROFILE_HZ = 10000          # each sample stops a vCPU: more would be the guest's whole time


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "run", help="boot a Linux guest (the project's fast guest if no kernel is given)",
        description="Boot a guest on /dev/kvm with a serial console. Without --kernel, boots "
                    "kvmkit's small test kernel and busybox initramfs (building them on first use). "
                    "On a terminal the console is interactive: Ctrl-a x quits, Ctrl-a h helps.",
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kernel", "-k", metavar="FILE", help="bzImage or ELF vmlinux")
    p.add_argument("--initrd", metavar="FILE", help="initramfs/initrd image")
    p.add_argument("--cmdline", "--append", metavar="TEXT", default=None,
                   help="kernel command line (default: console=ttyS0, or the fast guest's)")
    p.add_argument("--memory", "-m", metavar="SIZE", default=None,
                   help="guest RAM, e.g. 512M or 2G; a bare number is MiB (default 128M for kvmkit's "
                        "fast guest, 512M for a kernel you bring)")
    p.add_argument("--cpus", "--smp", type=int, metavar="N", default=1, help="vCPUs (default 1)")
    p.add_argument("--serial", metavar="DEST", default="stdio",
                   help="COM1: stdio (default), file:PATH, unix:PATH (listening socket) or null")
    p.add_argument("--host-compat", choices=("auto", "on", "off"), default="auto",
                   help="workarounds for hosts whose KVM emulates guest kernel code "
                        "(auto: probe the host; default auto)")
    p.add_argument("--name", help="VM name (QMP query-name)")
    p.add_argument("--uuid", help="VM UUID (QMP query-uuid; default: a random one)")
    p.add_argument("--exit-file", metavar="FILE",
                   help="when the VM ends, write {\"reason\", \"status\", \"error\"} as JSON to FILE "
                        "(atomically): how a manager that did not start this process learns why it ended; "
                        "a VMM that dies without writing it was killed")
    p.add_argument("--qmp", metavar="ADDR", action="append", default=[],
                   help="QMP server: unix:PATH[,server,wait=off] or tcp:127.0.0.1:PORT (repeatable)")
    p.add_argument("--paused", "-S", action="store_true", help="start with vCPUs paused (QMP cont runs them)")
    p.add_argument("--reboot", choices=("exit", "reset"), default="exit",
                   help="what a guest reboot does: exit kvmkit (status 32) or reset the VM (default exit)")
    p.add_argument("--profile", metavar="FILE",
                   help="sample the guest's RIP on every vCPU (about 100 Hz) while it runs and write a "
                        "profile of where the guest kernel spends its time to FILE when the VM ends "
                        "(function names from an ELF vmlinux's symbols)")
    p.add_argument("--profile-hz", type=float, default=100.0, metavar="HZ", help="samples per second per vCPU")
    p.add_argument("--restore", metavar="DIR[,shared=on]",
                   help="start from a snapshot (kvmkit snapshot create) instead of booting: the machine, "
                        "kernel and devices come from it; --serial, --qmp, --paused still apply. Guest RAM "
                        "is mapped from DIR/memory copy-on-write, or written back to it with shared=on")
    p.add_argument("--incoming", metavar="URI",
                   help="wait for a migration stream and continue the VM it carries: tcp:HOST:PORT or "
                        "unix:PATH (listen for the source's QMP migrate), file:PATH (a stream saved with "
                        "migrate file:), exec:CMD (read the command's output). The machine comes from the "
                        "stream, as with --restore; the QMP monitor opens once it has arrived. With --isolation on "
                        "the supervisor listens and hands the stream over (fd:N); exec: is refused")
    p.add_argument("--isolation", choices=("on", "off"), default=None,
                   help="run the VMM jailed: own mount/PID/IPC/network namespaces, a directory holding only "
                        "its files, its own unprivileged uid, no capabilities, a seccomp allow-list (default: "
                        "$KVMKIT_ISOLATION, else off; the manager turns it on; off is for debugging)")
    p.add_argument("--clone", metavar="DIR", nargs="?", const="", default=None,
                   help="with --restore: run an independent copy, so one snapshot can run many times at "
                        "once: each writable disk becomes a qcow2 linked clone of the snapshot's image, "
                        "each NIC a new tap and MAC, vsock a new CID; their files go to DIR (default: a "
                        "new DIR/clones/clone-XXXXXXXX under the snapshot), described in DIR/clone.json")
    p.add_argument("--fresh", action="store_true",
                   help="boot kvmkit's fast guest for real: do not restore it from, or save it to, the "
                        "start cache (by default the first run saves the guest at its shell prompt under "
                        "~/.cache/kvmkit/snapshots and later runs restore it in milliseconds)")
    p.add_argument("--jail-bind", action="append", default=[], metavar="DIR",
                   help="with --isolation on: the existing directory DIR is bound writable into the jail at its "
                        "own path and belongs to the VM's user while it runs, so QMP commands that write files "
                        "(kvmkit-snapshot-save, kvmkit-savevm, migrate file:) can write there (repeatable; "
                        "the manager binds each domain's save area); nothing without isolation")
    p.add_argument("--no-acpi", dest="acpi", action="store_false",
                   help="no ACPI tables or power-management ports (MP table only; "
                        "QMP system_powerdown then sends Ctrl-Alt-Del)")
    _add_virtio_options(p)
    from kvmkit.cli.run_resources import add_options
    add_options(p)
    p.set_defaults(handler=cmd_run)


def _add_virtio_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("virtio devices")
    g.add_argument("--disk", action="append", default=[], metavar="SPEC",
                   help="path=IMG[,format=raw|qcow2][,readonly=on][,cache=MODE][,discard=unmap][,serial=S]"
                        "[,werror=ACTION][,rerror=ACTION]: "
                        "a virtio-blk disk (/dev/vda, vdb, ...; repeatable). MODE as QEMU's: writeback "
                        "(default), none (O_DIRECT), writethrough (data on disk before a write completes), "
                        "directsync (both), unsafe (flushes ignored). werror/rerror as QEMU's, what a failed "
                        "write/read does: report (an I/O error in the guest), ignore, stop (pause the VM with a "
                        "BLOCK_IO_ERROR event; 'cont' retries), enospc (writes: stop on a full host disk, "
                        "report the rest; the werror default; rerror defaults to report)")
    g.add_argument("--net", action="append", default=[], metavar="SPEC", nargs="?", const="",
                   help="[tap=NAME][,mac=52:54:00:..][,bridge=BR][,fd=N]: a virtio-net NIC on a tap (created if "
                        "no name; repeatable); bridge=BR makes the tap a port of host bridge BR (e.g. a "
                        "`kvmkit virsh net-start` network's) and brings it up; fd=N: an open tap descriptor, "
                        "already set up by whoever hands it over (a jail's supervisor; tap= then names it)")
    g.add_argument("--console", metavar="virtio[,out=FILE]", dest="virtio_console",
                   help="a virtio console (hvc0)")
    g.add_argument("--rng", action="store_true", help="a virtio-rng device fed from the host's getrandom()")
    g.add_argument("--balloon", metavar="SPEC", nargs="?", const="", default=None,
                   help="a virtio-balloon device ([deflate-on-oom=on|off])")
    g.add_argument("--vsock", metavar="cid=N,uds=PATH",
                   help="a virtio-vsock device; host side is a unix socket, Firecracker's convention")
    g.add_argument("--virtio-transport", choices=("pci", "mmio"), default="pci",
                   help="PCI with MSI-X (default) or virtio-mmio on the kernel command line")


def _virtio_specs(args: argparse.Namespace):
    """The virtio options as a VirtioSpecs (None when no device was asked for)."""
    from kvmkit.devices.virtio import config as vc
    specs = vc.VirtioSpecs(
        transport=args.virtio_transport,
        disks=tuple(vc.parse_disk(d) for d in args.disk),
        nets=tuple(vc.parse_net(n) for n in args.net),
        console=vc.parse_console(args.virtio_console) if args.virtio_console is not None else None,
        rng=args.rng,
        balloon=vc.parse_balloon(args.balloon) if args.balloon is not None else None,
        vsock=vc.parse_vsock(args.vsock) if args.vsock is not None else None)
    return None if specs.empty else specs


# Options that describe the machine: a restore takes all of them from the snapshot.
MACHINE_OPTIONS = ("kernel", "initrd", "cmdline", "memory", "disk", "net", "virtio_console", "rng",
                   "balloon", "vsock")


def _restore_spec(text: str) -> tuple[str, bool]:
    from kvmkit.cli.run_resources import path_and_switch
    return path_and_switch(text, "--restore", "shared", "a snapshot directory")


def check_restore_options(args: argparse.Namespace, option: str = "--restore", source: str = "snapshot") -> None:
    given = [o for o in MACHINE_OPTIONS if getattr(args, o) not in (None, [], False)]
    if given or args.cpus != 1:
        names = ", ".join("--" + o.replace("virtio_", "").replace("_", "-") for o in given + (
            ["cpus"] if args.cpus != 1 else []))
        raise ConfigError(f"{option} takes the machine from the {source}; {names} cannot be given with it")


def _restored_machine(args: argparse.Namespace, serial):
    from kvmkit.vmm.machine import Machine
    check_restore_options(args)
    path, shared = _restore_spec(args.restore)
    from kvmkit.cli.run_resources import resource_spec
    if args.clone is not None:
        from kvmkit.vmm import clone
        if shared:
            raise ConfigError("--clone: clones share the snapshot's memory, so shared=on cannot be given")
        m = clone.restore(path, args.clone or None, serial=serial, start_paused=args.paused,
                          resources=resource_spec(args), **({"name": args.name} if args.name else {}))
        print(f"kvmkit: clone of {path} in {m.clone_directory}", file=sys.stderr)
        return m
    overrides = {}
    nets = getattr(args, "restore_nets", None)       # jailed: the supervisor opened the snapshot's taps
    if nets:
        from dataclasses import replace
        from kvmkit.vmm.snapshot import Snapshot
        overrides["virtio"] = replace(Snapshot.open(path).config().virtio, nets=tuple(nets))
    return Machine.restore(path, shared_memory=shared, serial=serial, start_paused=args.paused,
                           resources=resource_spec(args), **overrides)


def _incoming_machine(args: argparse.Namespace, serial):
    from kvmkit.vmm.migration.incoming import receive
    from kvmkit.vmm.migration.transport import Incoming, parse_uri
    check_restore_options(args, "--incoming", "migration stream")
    incoming = Incoming(parse_uri(args.incoming))
    if incoming.uri.scheme != "fd":              # fd: a jail's supervisor has waited (and said so)
        where = f"tcp port {incoming.port}" if incoming.port else args.incoming
        print(f"kvmkit: waiting for an incoming migration on {where}", file=sys.stderr, flush=True)
    nets = getattr(args, "restore_nets", None)
    arrival = receive(incoming, serial=serial, start_paused=args.paused, **({"nets": nets} if nets else {}))
    print(f"kvmkit: migration received ({arrival.pages * 4096 >> 20} MiB of RAM in "
          f"{arrival.seconds:.2f} s)", file=sys.stderr, flush=True)
    return arrival.machine


def cmd_run(args: argparse.Namespace) -> int:
    from kvmkit.vmm.config import SerialSpec, VmConfig
    from kvmkit.vmm.machine import Machine
    from kvmkit.cli import run_isolated

    if (args.isolation or run_isolated.default_isolation()) == "on":
        if args.clone is not None:
            raise ConfigError("--clone with --isolation on is not supported yet (a clone makes its taps and "
                              "overlays as it restores); use --isolation off")
        args.fresh = True                        # the start cache lives outside any jail: boot for real
        args.isolation = "off"                   # the jailed VMM runs this function again, inside
        return run_isolated.run_isolated(args, cmd_run)

    memory = parse_size(args.memory, default_unit="M", what="memory size") if args.memory is not None else None
    if not 0 < args.profile_hz <= MAX_PROFILE_HZ:
        raise ConfigError(f"--profile-hz {args.profile_hz:g} must be above 0 and at most {MAX_PROFILE_HZ}")
    if args.profile:
        _check_writable("--profile", args.profile)
    serial = SerialSpec.parse(args.serial)
    qmp_addrs = []
    if args.qmp:
        from kvmkit.cli.qmp import parse_qmp_address
        qmp_addrs = [parse_qmp_address(q) for q in args.qmp]
    if args.restore and args.incoming:
        raise ConfigError("--restore and --incoming both say where the VM comes from: give one")
    if args.clone is not None and not args.restore:
        raise ConfigError("--clone needs --restore DIR (the snapshot to clone)")
    if args.restore:
        return _run(args, _restored_machine(args, serial), qmp_addrs)
    if args.incoming:
        return _run(args, _incoming_machine(args, serial), qmp_addrs)
    kernel, initrd, cmdline = args.kernel, args.initrd, args.cmdline
    fast = kernel is None
    if kernel is None:
        if initrd is not None:
            raise ConfigError("--initrd needs --kernel")
        from kvmkit.guest.assets import fast_guest
        g = fast_guest(build=True)
        kernel, initrd = g.vmlinux, g.initrd
        cmdline = cmdline if cmdline is not None else g.cmdline
        memory = memory if memory is not None else parse_size(g.memory, default_unit="M")
    memory = memory if memory is not None else parse_size(DEFAULT_MEMORY, default_unit="M")
    if cmdline is None:
        cmdline = "console=ttyS0"
    from kvmkit.cli.run_resources import memory_backing, resource_spec
    config = VmConfig.build(kernel, initrd=initrd, cmdline=cmdline, memory=memory, cpus=args.cpus,
                            resources=resource_spec(args), memory_backing=memory_backing(args),
                            serial=serial, host_compat=args.host_compat, name=args.name,
                            **({"uuid": _uuid(args.uuid)} if args.uuid else {}),
                            start_paused=args.paused, reboot_action=args.reboot, acpi=args.acpi,
                            virtio=_virtio_specs(args))
    if fast and not args.fresh and _cacheable(args):
        from kvmkit.vmm import start_cache
        entry = start_cache.lookup(config)
        if entry is not None:
            t0 = time.monotonic()
            machine = start_cache.restore(entry, serial=serial, start_paused=args.paused,
                                          reboot_action=args.reboot,
                                          **({"name": args.name} if args.name else {}),
                                          **({"uuid": config.uuid} if args.uuid else {}))
            behind = start_cache.clock_lag(machine)
            print(f"kvmkit: the fast guest restored at its shell from the start cache in "
                  f"{(time.monotonic() - t0) * 1000:.0f} ms ({entry.path}; --fresh boots it); its clock "
                  f"continues from the save, {behind:.0f} s behind (hwclock -s sets it)", file=sys.stderr)
            return _run(args, machine, qmp_addrs)
        machine = Machine(config)
        saver = start_cache.PromptSaver(machine, FAST_PROMPT)
        status = _run(args, machine, qmp_addrs, on_start=saver.start)
        if saver.saved is not None:
            print(f"kvmkit: the fast guest was saved at its shell prompt to the start cache ({saver.saved}); "
                  "the next kvmkit run restores it instead of booting (--fresh boots)", file=sys.stderr)
        return status
    return _run(args, Machine(config), qmp_addrs)


def _cacheable(args: argparse.Namespace) -> bool:
    """The start cache holds the plain fast guest: no devices (their host
    ends are not in a snapshot's key) and no profile of its boot."""
    return _virtio_specs(args) is None and not args.profile


def _run(args: argparse.Namespace, machine, qmp_addrs, on_start=None) -> int:
    if machine.compat.enabled:
        print(f"kvmkit: {machine.compat.describe()}", file=sys.stderr)
    monitors = []
    profiler = None
    try:
        if qmp_addrs:
            from kvmkit.cli.qmp import start_monitor
            monitors = [start_monitor(machine, a) for a in qmp_addrs]
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, lambda *_: machine.quit())
        from kvmkit.host.jail import lockdown
        lockdown()                               # jailed: seccomp from here on (everything is open)
        machine.start()
        if on_start is not None:
            on_start()
        if args.profile:
            profiler = machine.start_profile(args.profile_hz)
        while machine.wait(0.5) is None:
            pass
    except KeyboardInterrupt:
        machine.quit()
    finally:
        for mon in monitors:
            mon.close()
        machine.close()
        if profiler is not None:
            profiler.stop()
            try:
                profiler.write(args.profile, machine.kernel.path if machine.kernel.kind == "elf" else None)
                print(f"kvmkit: guest profile written to {args.profile}", file=sys.stderr)
            except OSError as exc:
                print(f"kvmkit: error: --profile {args.profile}: {exc.strerror or exc}", file=sys.stderr)
    status = _report(machine)
    if args.exit_file:
        _write_exit_file(args.exit_file, machine, status)
    return status


def _uuid(text: str) -> str:
    import uuid
    try:
        return str(uuid.UUID(text))
    except ValueError:
        raise ConfigError(f"--uuid {text!r} is not a UUID") from None


def _write_exit_file(path: str, machine, status: int) -> None:
    """The end of this VM as data (write, fsync, rename: never half a record)."""
    import json
    import os
    reason = machine.exit_reason.value if machine.exit_reason is not None else None
    record = {"reason": reason, "status": status,
              "error": str(machine.error) if machine.error else None}
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(record, f)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, path)


def _check_writable(option: str, path: str) -> None:
    """Fail before the boot, not after it, when an output file cannot be
    written: a profile is only written when the VM ends."""
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise host_error(f"{option} {path}", exc) from None


def _report(machine) -> int:
    reason = machine.exit_reason
    out = machine.console.output
    if reason == ExitReason.ERROR:
        print(f"kvmkit: error: {machine.error}", file=sys.stderr)
    elif reason in (ExitReason.REBOOT, ExitReason.TRIPLE_FAULT):
        print(f"\nkvmkit: guest {'rebooted' if reason == ExitReason.REBOOT else 'triple-faulted'} "
              f"(exit status {machine.exit_status})", file=sys.stderr)
    if INIT_DIED in out:
        print("kvmkit: note: the guest's init process died (the kernel's panic message is on the console "
              "above); kvmkit run --profile FILE or QMP query-kvmkit-stats help to see where", file=sys.stderr)
    if machine.compat.enabled:
        print(f"kvmkit: {compat_summary(machine.query_stats())}", file=sys.stderr)
    return machine.exit_status if machine.exit_status is not None else 1


def compat_summary(stats: dict) -> str:
    """One line of what host-compat did in this VM's life."""
    hc = stats["host-compat"]
    parts = []
    trap = hc.get("syscall-trap")
    if trap is not None:
        parts.append(f"{trap['syscalls']} syscalls completed, {trap['page_faults']} page faults passed "
                     f"through, {trap['fallbacks']} single-step fallbacks")
    done = ", ".join(f"{k} x{v}" for k, v in sorted(hc["completed"].items()))
    parts.append(f"instructions completed: {done or 'none'}")
    return f"host-compat: {'; '.join(parts)} ({stats['exits']['total']} exits)"
