"""A per-VM jail, the role of Firecracker's jailer and libvirt's sVirt/DAC:
the VMM process runs

- in its own mount, PID, IPC, UTS and network namespaces: it sees only the
  files bound into its jail, only its own processes, and no network
  interface (a tap reaches it as an open descriptor, the interface stays
  where the host bridges it);
- pivoted into a per-VM directory that holds only what the VM needs: a
  private ``/dev`` with ``kvm`` (and ``null``), the kernel and initrd
  read-only, its own disks, the Python runtime and kvmkit read-only, and the
  directories where it makes its sockets.  Every file keeps its host path,
  so a qcow2 backing file named relative to its overlay resolves as outside;
- as its own unprivileged uid/gid (:mod:`kvmkit.host.ids`), with no
  capabilities (bounding set emptied, NO_NEW_PRIVS), so even a file some
  mistake left in the jail is out of reach unless it belongs to this VM.

The seccomp filter (:mod:`kvmkit.host.seccomp_filter`) comes last, once
the VMM has opened everything (:func:`lockdown`).

Host side (:func:`build`, :func:`remove`) runs in the supervisor before
and after the VMM; :func:`kvmkit.host.jail_process.spawn` forks the VMM
into the namespaces.  Every
mount is made in the VMM's own mount namespace, so all of them vanish with
it; the supervisor then deletes the directory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from kvmkit.errors import ConfigError, HostResourceError

ENV_JAIL_DIR = "KVMKIT_JAIL_DIR"
DEFAULT_JAIL_DIR = Path("/run/kvmkit/jails")
ENV_ISOLATION = "KVMKIT_ISOLATION"   # on | off: overrides the caller's default
ENV_INSIDE = "KVMKIT_JAILED"          # set inside a jail: lockdown() then loads seccomp
ENV_SECCOMP = "KVMKIT_SECCOMP"        # enforce (default) | log (learn the allow-list)

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_SET_KEEPCAPS, PR_CAPBSET_DROP = 8, 24
PR_SET_NO_NEW_PRIVS, PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 38, 47, 4
SYS_PIVOT_ROOT, SYS_CAPSET = 155, 126
DEVICES = {"/dev/kvm": (10, 232, 0o600), "/dev/null": (1, 3, 0o666)}

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class JailError(HostResourceError):
    """The jail could not be set up: the message names the step and the host's reason."""


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise JailError(f"jail: {what}: {os.strerror(err)}")


@dataclass(frozen=True)
class Bind:
    """A host file or directory seen at the same path inside the jail."""

    path: str
    writable: bool = False


@dataclass(frozen=True)
class JailSpec:
    """What one VMM's jail holds (built by the caller, e.g. ``kvmkit run``)."""

    root: Path                                  # host directory that becomes the VMM's "/"
    uid: int
    gid: int
    binds: tuple[Bind, ...] = ()
    owned_dirs: tuple[str, ...] = ()            # jail paths created for and owned by the VM user
    cwd: str = "/"
    keep_fds: tuple[int, ...] = ()              # descriptors the VMM keeps (taps, locks); others are closed
    devices: tuple[str, ...] = ("/dev/kvm", "/dev/null")


def isolation_setting(default: str) -> str:
    """``on`` or ``off``: KVMKIT_ISOLATION if set, else ``default`` (the
    manager's is on, a bare ``kvmkit run``'s off)."""
    value = os.environ.get(ENV_ISOLATION) or default
    if value not in ("on", "off"):
        raise ConfigError(f"{ENV_ISOLATION}={value!r}: expected on or off")
    return value


def jail_dir() -> Path:
    return Path(os.environ.get(ENV_JAIL_DIR) or DEFAULT_JAIL_DIR)


def _inside(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def build(spec: JailSpec) -> None:
    """Create the jail directory and the mount points in it (host side).
    On failure nothing is left behind."""
    if spec.root.exists():
        remove(spec)                            # a stale jail of a killed supervisor that had this id
    try:
        spec.root.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        spec.root.mkdir(mode=0o755)
    except OSError as exc:
        raise JailError(f"jail directory {spec.root}: cannot create it: {exc.strerror}") from None
    try:
        os.chmod(spec.root, 0o755)
        _inside(spec.root, "/dev").mkdir()
        for b in spec.binds:
            target = _inside(spec.root, b.path)
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            if os.path.isdir(b.path):
                target.mkdir(exist_ok=True)
            elif not target.exists():
                target.touch()
        for d in spec.owned_dirs:
            target = _inside(spec.root, d)
            target.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chown(target, spec.uid, spec.gid)
    except OSError as exc:
        remove(spec)
        raise JailError(f"jail directory {spec.root}: {exc.strerror}: {exc.filename}") from None


def remove(spec: JailSpec) -> None:
    """Delete the jail directory — never through a mount: if anything is
    still mounted under it (it should not be: mounts live in the VMM's own
    namespace), it is left alone and that is an error."""
    root = str(spec.root.resolve()) if spec.root.exists() else str(spec.root)
    with open("/proc/self/mountinfo") as f:
        mounted = [ln.split()[4] for ln in f if ln.split()[4] == root or ln.split()[4].startswith(root + "/")]
    if mounted:
        raise JailError(f"jail directory {root}: still has mounts ({', '.join(mounted[:3])}); not removed")
    shutil.rmtree(spec.root, ignore_errors=True)


def enter(spec: JailSpec, last_cap: int) -> None:
    """In the forked child (PID 1 of its namespace, still root): namespaces,
    mounts, pivot, then drop to the VM's user (see :mod:`jail_process`)."""
    _close_fds(set(spec.keep_fds) | {0, 1, 2})
    _check(_libc.unshare(CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWNET | CLONE_NEWUTS),
           "new mount/IPC/network namespaces (unshare)")
    root = str(spec.root)
    _mount(None, "/", None, MS_REC | MS_PRIVATE, "make / private")
    _mount(root, root, None, MS_BIND, f"bind {root}")
    for b in spec.binds:
        target = str(_inside(spec.root, b.path))
        _mount(b.path, target, None, MS_BIND | MS_REC, f"bind {b.path}")
        flags = MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV | (0 if b.writable else MS_RDONLY)
        _mount(None, target, None, flags, f"remount {b.path}")
    dev = str(_inside(spec.root, "/dev"))
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, f"tmpfs on {dev}", "mode=0755,size=64k")
    for name in spec.devices:
        major, minor, mode = DEVICES[name]
        node = str(_inside(spec.root, name))
        try:
            os.mknod(node, stat.S_IFCHR | mode, os.makedev(major, minor))
            os.chown(node, spec.uid, spec.gid)
        except OSError as exc:
            raise JailError(f"jail: device node {name}: {exc.strerror}") from None
    os.chdir(root)
    _check(_libc.syscall(SYS_PIVOT_ROOT, b".", b"."), "pivot_root")
    _check(_libc.umount2(b".", MNT_DETACH), "detach the host's root")
    os.chdir(spec.cwd)
    _drop_privileges(spec.uid, spec.gid, last_cap)
    os.environ[ENV_INSIDE] = "1"


def _mount(src: str | None, target: str, fstype: str | None, flags: int, what: str, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(_libc.mount(enc(src), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)), what)


def _close_fds(keep: set[int]) -> None:
    """Nothing of the supervisor's crosses into the jail but what is kept
    (a directory descriptor would be a way out of it)."""
    for fd in [int(n) for n in os.listdir("/proc/self/fd")]:
        if fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass


def _drop_privileges(uid: int, gid: int, last_cap: int) -> None:
    _check(_libc.prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0), "keep-caps off")
    for cap in range(last_cap + 1):
        _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"drop capability {cap} from the bounding set")
    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as exc:
        raise JailError(f"jail: become uid/gid {uid}: {exc.strerror}") from None
    _check(_libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient capabilities")
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)          # _LINUX_CAPABILITY_VERSION_3, this process
    data = (ctypes.c_uint32 * 6)()                           # effective, permitted, inheritable: none
    _check(_libc.syscall(SYS_CAPSET, header, data), "clear capabilities (capset)")
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no new privileges")


def lockdown() -> None:
    """Load the seccomp filter if this process is a jailed VMM (a no-op
    otherwise).  The VMM calls it when its machine is built and its
    sockets listen, just before the vCPUs run."""
    if os.environ.get(ENV_INSIDE) != "1":
        return
    from kvmkit.host import seccomp_filter
    mode = os.environ.get(ENV_SECCOMP, seccomp_filter.ENFORCE)
    if mode != "off":
        seccomp_filter.install(mode)
    probe = os.environ.pop(ENV_TEST_PROBE, None)
    if probe:
        _run_probe(probe)


# Test hook: Python source run in place of the vCPUs, in the VMM process, after
# every layer of the jail is in place - the position of a guest that escaped
# into the VMM.  The tests use it to show what such code can and cannot do.
ENV_TEST_PROBE = "KVMKIT_JAIL_TEST_PROBE"


def _run_probe(source: str) -> None:
    namespace: dict = {}
    exec(compile(source, "<jail probe>", "exec"), namespace)  # noqa: S102 - test hook, see above
    sys.stdout.flush()
    os._exit(int(namespace.get("status", 0)))
