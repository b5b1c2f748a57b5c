"""Every ``kvmkit`` subcommand, driven as a user would drive it wrong:
missing, empty, wrong-type and out-of-range arguments, and host resources
that cannot be had (RAM, /dev/kvm, taps, sockets, files).

Each case is a real process.  What must hold for every one: a non-zero exit
status, a message on stderr, and no Python traceback.  A case that fails here
is a bug in kvmkit, not in the case: fix the boundary that should have
explained the problem.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

KVMKIT = [sys.executable, "-m", "kvmkit.cli.main"]
LONG = "x" * 70000                       # longer than any name field kvmkit stores


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_guest) -> dict[str, str]:
    """The files the cases point at: junk, empty, a good qcow2, a qcow2
    whose backing file is gone, a world-readable copy of a tiny guest."""
    d = tmp_path_factory.mktemp("audit")
    os.chmod(d, 0o755)
    (d / "junk.bin").write_bytes(bytes(range(256)) * 4)
    (d / "empty.img").write_bytes(b"")
    (d / "notasocket").write_text("a regular file\n")
    qemu_img = shutil.which("qemu-img")
    assert qemu_img, "qemu-img is needed (apt-get install qemu-utils)"
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(d / "good.qcow2"), "1M"], check=True)
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", str(d / "base.qcow2"), "1M"], check=True)
    subprocess.run([qemu_img, "create", "-q", "-f", "qcow2", "-b", str(d / "base.qcow2"), "-F", "qcow2",
                    str(d / "orphan.qcow2")], check=True)
    (d / "base.qcow2").unlink()
    guest = d / "hello.elf"
    shutil.copy(tiny_guest("hello"), guest)
    os.chmod(guest, 0o644)
    return {"dir": str(d), "junk": str(d / "junk.bin"), "empty": str(d / "empty.img"),
            "qcow2": str(d / "good.qcow2"), "orphan": str(d / "orphan.qcow2"),
            "guest": str(guest), "file": str(d / "notasocket")}


RUN = ["run", "--host-compat", "off", "--kernel", "{guest}"]

CASES: list[tuple[str, list[str]]] = [
    # -- kvmkit itself
    ("no command", []),
    ("unknown command", ["bogus"]),
    ("only -v", ["-v"]),
    # -- run: host resources
    ("100T of RAM (mmap refuses)", ["run", "-m", "100T"]),
    ("100T of RAM, own kernel", [*RUN, "-m", "100T"]),
    ("disk that does not exist", [*RUN, "--disk", "path={dir}/nonexistent.img"]),
    ("disk is a directory", [*RUN, "--disk", "path={dir}"]),
    ("disk is not qcow2", [*RUN, "--disk", "path={junk},format=qcow2"]),
    ("disk backing file missing", [*RUN, "--disk", "path={orphan}"]),
    ("tap that is not a tap", [*RUN, "--net", "tap=lo"]),
    ("serial socket in a missing directory", [*RUN, "--serial", "unix:{dir}/no/dir/s"]),
    ("serial file in a missing directory", [*RUN, "--serial", "file:{dir}/no/dir/s"]),
    ("serial socket path too long", [*RUN, "--serial", "unix:{dir}/" + "s" * 200]),
    ("QMP socket in a missing directory", [*RUN, "--qmp", "unix:{dir}/no/q,server,wait=off"]),
    ("QMP socket path is a file", [*RUN, "--qmp", "unix:{file},server,wait=off"]),
    ("QMP on a non-loopback host", [*RUN, "--qmp", "tcp:192.0.2.1:4444,server,wait=off"]),
    ("vsock socket in a missing directory", [*RUN, "--vsock", "cid=3,uds={dir}/no/v"]),
    ("vsock socket path is a file", [*RUN, "--vsock", "cid=3,uds={file}"]),
    ("virtio console output unwritable", [*RUN, "--console", "virtio,out={dir}/no/out"]),
    ("profile output unwritable", [*RUN, "--profile", "{dir}/no/profile"]),
    # -- run: missing, empty, wrong type, out of range
    ("kernel empty", ["run", "--kernel", ""]),
    ("kernel missing", ["run", "--kernel", "{dir}/nonexistent"]),
    ("kernel is junk", ["run", "--kernel", "{junk}"]),
    ("kernel is empty", ["run", "--kernel", "{empty}"]),
    ("kernel is a directory", ["run", "--kernel", "{dir}"]),
    ("kernel option without value", ["run", "--kernel"]),
    ("initrd without kernel", ["run", "--initrd", "{junk}"]),
    ("initrd empty path", [*RUN, "--initrd", ""]),
    ("initrd missing", [*RUN, "--initrd", "{dir}/nonexistent"]),
    ("memory empty", [*RUN, "-m", ""]),
    ("memory zero", [*RUN, "-m", "0"]),
    ("memory negative", [*RUN, "-m", "-5"]),
    ("memory not a size", [*RUN, "-m", "lots"]),
    ("memory fraction of a byte", [*RUN, "-m", "0.5B"]),
    ("cpus zero", [*RUN, "--cpus", "0"]),
    ("cpus negative", [*RUN, "--cpus", "-1"]),
    ("cpus huge", [*RUN, "--cpus", "100000"]),
    ("cpus not a number", [*RUN, "--cpus", "two"]),
    ("serial unknown kind", [*RUN, "--serial", "tcp:1"]),
    ("serial empty", [*RUN, "--serial", ""]),
    ("serial file without path", [*RUN, "--serial", "file:"]),
    ("host-compat bogus", [*RUN, "--host-compat", "maybe"]),
    ("reboot bogus", [*RUN, "--reboot", "halt"]),
    ("qmp empty", [*RUN, "--qmp", ""]),
    ("qmp bogus", [*RUN, "--qmp", "pipe:x"]),
    ("qmp port out of range", [*RUN, "--qmp", "tcp:127.0.0.1:99999,server,wait=off"]),
    ("qmp port not a number", [*RUN, "--qmp", "tcp:127.0.0.1:http"]),
    ("profile-hz zero", [*RUN, "--profile-hz", "0"]),
    ("profile-hz negative", [*RUN, "--profile-hz", "-10"]),
    ("profile-hz not a number", [*RUN, "--profile-hz", "fast"]),
    ("profile-hz nan", [*RUN, "--profile-hz", "nan"]),
    ("profile-hz huge", [*RUN, "--profile-hz", "1e9"]),
    ("cmdline too long", [*RUN, "--cmdline", LONG]),
    ("disk empty", [*RUN, "--disk", ""]),
    ("disk without path", [*RUN, "--disk", "format=raw"]),
    ("disk unknown key", [*RUN, "--disk", "path={junk},speed=fast"]),
    ("disk bad format", [*RUN, "--disk", "path={junk},format=vmdk"]),
    ("disk bad cache", [*RUN, "--disk", "path={junk},cache=sometimes"]),
    ("disk bad readonly", [*RUN, "--disk", "path={junk},readonly=perhaps"]),
    ("disk serial too long", [*RUN, "--disk", "path={junk},serial=" + "s" * 30]),
    ("disk key twice", [*RUN, "--disk", "path={junk},path={junk}"]),
    ("net tap name too long", [*RUN, "--net", "tap=" + "t" * 20]),
    ("net bad mac", [*RUN, "--net", "mac=52:54:00"]),
    ("net multicast mac", [*RUN, "--net", "mac=01:00:5e:00:00:01"]),
    ("console not virtio", [*RUN, "--console", "serial"]),
    ("balloon unknown key", [*RUN, "--balloon", "size=1G"]),
    ("balloon bad bool", [*RUN, "--balloon", "deflate-on-oom=sometimes"]),
    ("vsock empty", [*RUN, "--vsock", ""]),
    ("vsock reserved cid", [*RUN, "--vsock", "cid=2,uds={dir}/v"]),
    ("vsock cid not a number", [*RUN, "--vsock", "cid=three,uds={dir}/v"]),
    ("vsock cid too large", [*RUN, "--vsock", "cid=99999999999,uds={dir}/v"]),
    ("virtio transport bogus", [*RUN, "--virtio-transport", "isa"]),
    # -- guest
    ("guest without subcommand", ["guest"]),
    ("guest unknown subcommand", ["guest", "bake"]),
    ("guest build unknown guest", ["guest", "build", "windows"]),
    ("guest path unknown guest", ["guest", "path", ""]),
    # -- img
    ("img without subcommand", ["img"]),
    ("img unknown subcommand", ["img", "bogus"]),
    ("img create without file", ["img", "create"]),
    ("img create without size", ["img", "create", "-f", "qcow2", "{dir}/new.qcow2"]),
    ("img create empty size", ["img", "create", "-f", "qcow2", "{dir}/new.qcow2", ""]),
    ("img create size not a size", ["img", "create", "-f", "qcow2", "{dir}/new.qcow2", "big"]),
    ("img create negative size", ["img", "create", "-f", "qcow2", "{dir}/new.qcow2", "-1"]),
    ("img create qcow2 100E", ["img", "create", "-f", "qcow2", "{dir}/new.qcow2", "100E"]),
    ("img create raw 100E", ["img", "create", "-f", "raw", "{dir}/new.raw", "100E"]),
    ("img create empty filename", ["img", "create", "-f", "raw", "", "1M"]),
    ("img create in a missing directory", ["img", "create", "-f", "raw", "{dir}/no/new.raw", "1M"]),
    ("img create over a directory", ["img", "create", "-f", "raw", "{dir}", "1M"]),
    ("img create bad format", ["img", "create", "-f", "vmdk", "{dir}/new.vmdk", "1M"]),
    ("img create bad cluster size", ["img", "create", "-f", "qcow2", "-o", "cluster_size=3",
                                     "{dir}/new.qcow2", "1M"]),
    ("img create cluster size not a size", ["img", "create", "-f", "qcow2", "-o", "cluster_size=big",
                                            "{dir}/new.qcow2", "1M"]),
    ("img create option without value", ["img", "create", "-f", "qcow2", "-o", "compat",
                                         "{dir}/new.qcow2", "1M"]),
    ("img create unknown option", ["img", "create", "-f", "qcow2", "-o", "colour=blue",
                                   "{dir}/new.qcow2", "1M"]),
    ("img create bad refcount bits", ["img", "create", "-f", "qcow2", "-o", "refcount_bits=3",
                                      "{dir}/new.qcow2", "1M"]),
    ("img create missing backing", ["img", "create", "-f", "qcow2", "-b", "{dir}/nonexistent",
                                    "{dir}/new.qcow2"]),
    ("img create junk backing as qcow2", ["img", "create", "-f", "qcow2", "-b", "{junk}", "-F", "qcow2",
                                          "{dir}/new.qcow2"]),
    ("img info without file", ["img", "info"]),
    ("img info empty filename", ["img", "info", ""]),
    ("img info missing file", ["img", "info", "{dir}/nonexistent"]),
    ("img info directory", ["img", "info", "{dir}"]),
    ("img info empty file as qcow2", ["img", "info", "-f", "qcow2", "{empty}"]),
    ("img info junk as qcow2", ["img", "info", "-f", "qcow2", "{junk}"]),
    ("img info orphan", ["img", "info", "{orphan}"]),
    ("img info bad output", ["img", "info", "--output", "xml", "{qcow2}"]),
    ("img check raw", ["img", "check", "{junk}"]),
    ("img check empty as qcow2", ["img", "check", "-f", "qcow2", "{empty}"]),
    ("img check missing", ["img", "check", "{dir}/nonexistent"]),
    ("img check bad repair", ["img", "check", "-r", "some", "{qcow2}"]),
    ("img convert without target", ["img", "convert", "{qcow2}"]),
    ("img convert missing source", ["img", "convert", "{dir}/nonexistent", "{dir}/out.raw"]),
    ("img convert onto itself", ["img", "convert", "{junk}", "{junk}"]),
    ("img convert into a missing directory", ["img", "convert", "{junk}", "{dir}/no/out.raw"]),
    ("img convert compress to raw", ["img", "convert", "-c", "{junk}", "{dir}/out.raw"]),
    ("img convert bad cluster size", ["img", "convert", "-O", "qcow2", "-o", "cluster_size=1",
                                      "{junk}", "{dir}/out.qcow2"]),
    ("img convert orphan", ["img", "convert", "{orphan}", "{dir}/out.raw"]),
    ("img resize without size", ["img", "resize", "{junk}"]),
    ("img resize empty size", ["img", "resize", "{junk}", ""]),
    ("img resize size not a size", ["img", "resize", "{junk}", "bigger"]),
    ("img resize raw to 100E", ["img", "resize", "{junk}", "+100E"]),
    ("img resize qcow2 to 100E", ["img", "resize", "{qcow2}", "+100E"]),
    ("img resize qcow2 to 100P", ["img", "resize", "{qcow2}", "100P"]),
    ("img resize below zero", ["img", "resize", "{junk}", "--", "-1G"]),
    ("img resize shrink without --shrink", ["img", "resize", "{qcow2}", "1K"]),
    ("img resize directory", ["img", "resize", "{dir}", "1G"]),
    ("img snapshot without action", ["img", "snapshot", "{qcow2}"]),
    ("img snapshot raw", ["img", "snapshot", "-l", "{junk}"]),
    ("img snapshot apply missing", ["img", "snapshot", "-a", "nosuch", "{qcow2}"]),
    ("img snapshot delete missing", ["img", "snapshot", "-d", "nosuch", "{qcow2}"]),
    ("img snapshot name too long", ["img", "snapshot", "-c", LONG, "{qcow2}"]),
    ("img rebase without -b", ["img", "rebase", "{qcow2}"]),
    ("img rebase raw", ["img", "rebase", "-b", "", "{junk}"]),
    ("img rebase onto a missing file", ["img", "rebase", "-b", "{dir}/nonexistent", "{qcow2}"]),
    ("img commit without backing", ["img", "commit", "{qcow2}"]),
    ("img commit orphan", ["img", "commit", "{orphan}"]),
    ("img commit missing", ["img", "commit", "{dir}/nonexistent"]),
    ("img map missing", ["img", "map", "{dir}/nonexistent"]),
    ("img map empty filename", ["img", "map", ""]),
    # -- qmp
    ("qmp without arguments", ["qmp"]),
    ("qmp without command", ["qmp", "{dir}/q"]),
    ("qmp no server", ["qmp", "{dir}/q", "query-status"]),
    ("qmp a regular file", ["qmp", "{file}", "query-status"]),
    ("qmp empty path", ["qmp", "", "query-status"]),
    ("qmp tcp refused", ["qmp", "tcp:127.0.0.1:1", "query-status"]),
    ("qmp tcp port out of range", ["qmp", "tcp:127.0.0.1:99999", "query-status"]),
    ("qmp tcp without port", ["qmp", "tcp:127.0.0.1", "query-status"]),
    ("qmp args not JSON", ["qmp", "{dir}/q", "query-status", "{not json"]),
    ("qmp args not an object", ["qmp", "{dir}/q", "query-status", "[1, 2]"]),
    ("qmp timeout negative", ["qmp", "--timeout", "-1", "{dir}/q", "query-status"]),
    ("qmp timeout zero", ["qmp", "--timeout", "0", "{dir}/q", "query-status"]),
    ("qmp timeout nan", ["qmp", "--timeout", "nan", "{dir}/q", "query-status"]),
    ("qmp timeout inf", ["qmp", "--timeout", "inf", "{dir}/q", "query-status"]),
    ("qmp timeout not a number", ["qmp", "--timeout", "soon", "{dir}/q", "query-status"]),
]


def _fill(args: list[str], files: dict[str, str]) -> list[str]:
    out = []
    for a in args:
        for key, value in files.items():
            a = a.replace("{" + key + "}", value)
        out.append(a)
    return out


def _assert_clean_failure(p: subprocess.CompletedProcess, what: str) -> None:
    assert "Traceback" not in p.stderr, f"{what}: traceback\n{p.stderr[-3000:]}"
    assert p.returncode != 0, f"{what}: exit status 0\n{p.stderr[-2000:]}"
    assert p.stderr.strip(), f"{what}: no message"
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith(("kvmkit", "usage")), f"{what}: {last[:300]!r}"
    assert len(last) < 1000, f"{what}: message of {len(last)} characters"


@pytest.mark.kvm
@pytest.mark.parametrize("what,args", CASES, ids=[c[0] for c in CASES])
def test_bad_invocation_fails_cleanly(files, what, args):
    p = subprocess.run([*KVMKIT, *_fill(args, files)], capture_output=True, text=True,
                       timeout=120, stdin=subprocess.DEVNULL)
    _assert_clean_failure(p, what)


@pytest.mark.kvm
def test_ram_failure_names_the_resource_and_the_reason(files):
    p = subprocess.run([*KVMKIT, *_fill([*RUN, "-m", "100T"], files)], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 1
    assert p.stderr.strip().splitlines()[-1].startswith(
        "kvmkit run: error: guest RAM: cannot map 100T: Cannot allocate memory"), p.stderr


@pytest.mark.kvm
def test_disk_error_names_the_option(files):
    p = subprocess.run([*KVMKIT, *_fill([*RUN, "--disk", "path={junk},format=qcow2"], files)],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert f"error: --disk path={files['junk']}: not a qcow2 image" in p.stderr, p.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged user")
def test_dev_kvm_denied_is_one_line(files):
    """/dev/kvm is root-only here: an unprivileged user gets the reason and
    what to do, not a traceback."""
    with tempfile.TemporaryDirectory(prefix="kvmkit-audit-") as public:   # pytest's tmp is 0700
        os.chmod(public, 0o755)
        kernel = shutil.copy(files["guest"], public)
        os.chmod(kernel, 0o644)
        p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            *KVMKIT, "run", "--host-compat", "off", "--kernel", kernel],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": public})
    if os.access("/dev/kvm", os.R_OK | os.W_OK) and "permission denied" not in p.stderr:
        pytest.skip("/dev/kvm is open to everyone here")
    _assert_clean_failure(p, "unprivileged run")
    assert "/dev/kvm: permission denied" in p.stderr, p.stderr


def test_unreadable_kernel_says_so(files):
    """A kernel under a directory the user may not search: stat fails with
    EACCES, which must be a one-line error too."""
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    private = Path(files["dir"]) / "private"
    private.mkdir(mode=0o700, exist_ok=True)
    shutil.copy(files["guest"], private / "k.elf")
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        *KVMKIT, "run", "--kernel", str(private / "k.elf")], capture_output=True,
                       text=True, timeout=60)
    _assert_clean_failure(p, "unreadable kernel")
    assert "permission denied" in p.stderr, p.stderr


def test_guest_memory_that_cannot_be_mapped_is_a_host_resource_error():
    """The library, not only the CLI: an mmap the host refuses is a
    HostResourceError (a KvmkitError) naming RAM and the size, with the
    regions mapped so far released."""
    from kvmkit.errors import HostResourceError
    from kvmkit.memory.guest_memory import GuestMemory
    with pytest.raises(HostResourceError, match=r"guest RAM: cannot map 1025T: Cannot allocate memory"):
        GuestMemory.anonymous([(0, 1 << 20), (1 << 32, (1 << 50) + (1 << 40) - (1 << 20))])
