"""``kvmkit run`` as a user meets it: a real process, a real terminal (pty)
for the interactive console, pipes for the plain one, and one-line errors."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import termios
import time

import pytest

KVMKIT = [sys.executable, "-m", "kvmkit.cli.main"]


def run(*args, **kw):
    return subprocess.run([*KVMKIT, *args], capture_output=True, text=True, timeout=60, **kw)


@pytest.mark.parametrize("args,message", [
    (["--kernel", "/nonexistent/vmlinux"], "kernel /nonexistent/vmlinux: no such file"),
    (["--kernel", "/etc/hostname"], "not a Linux kernel"),
    (["--kernel", "/tmp"], "directory"),
    (["--kernel", "/bin/true"], "not a kernel"),
    (["--kernel", "{guest}", "-m", "12Q"], "invalid memory size '12Q'"),
    (["--kernel", "{guest}", "-m", "1M"], "too small"),
    (["--kernel", "{guest}", "--cpus", "100000"], "more than this host's KVM allows"),
    (["--kernel", "{guest}", "--cpus", "0"], "at least 1"),
    (["--kernel", "{guest}", "--initrd", "/nonexistent"], "initrd /nonexistent: no such file"),
    (["--kernel", "{guest}", "--serial", "tcp:1"], "invalid serial"),
])
def test_bad_input_is_one_line_and_nonzero(tiny_guest, args, message):
    args = [a.replace("{guest}", str(tiny_guest("hello"))) for a in args]
    p = run("run", *args)
    assert p.returncode != 0
    assert message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_initrd_too_large_for_memory(tiny_guest, tmp_path):
    big = tmp_path / "initrd"
    with open(big, "wb") as f:
        f.truncate(40 << 20)
    p = run("run", "--kernel", str(tiny_guest("hello")), "--initrd", str(big), "-m", "64M")
    assert p.returncode != 0 and "too large" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.kvm
def test_piped_console_is_plain_and_status_reports_the_guest(tiny_guest):
    p = subprocess.run([*KVMKIT, "run", "--kernel", str(tiny_guest("serial")), "-m", "64M"],
                       capture_output=True, timeout=60)
    assert p.stdout == b"serial console ok\r\n"
    assert p.returncode == 1          # the guest wrote 0 to the exit port: (0 << 1) | 1


@pytest.mark.kvm
def test_debug_exit_status_passes_through(tiny_guest):
    p = run("run", "--kernel", str(tiny_guest("hello")), "--cmdline", "5", "-m", "64M")
    assert p.returncode == 11, p.stderr


@pytest.mark.kvm
def test_serial_to_file(tiny_guest, tmp_path):
    log = tmp_path / "console.log"
    p = run("run", "--kernel", str(tiny_guest("serial")), "-m", "64M", "--serial", f"file:{log}")
    assert p.returncode == 1 and p.stdout == ""
    assert log.read_bytes() == b"serial console ok\r\n"


def _read_until(fd, needle: bytes, timeout: float = 20) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while needle not in buf:
        left = deadline - time.monotonic()
        assert left > 0, f"{needle!r} not seen; got {buf!r}"
        r, _, _ = select.select([fd], [], [], left)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
    return buf


@pytest.mark.kvm
def test_interactive_console_echo_and_ctrl_a_x(tiny_guest):
    pid, fd = pty.fork()
    if pid == 0:  # child: kvmkit on a terminal
        os.execv(sys.executable, [*KVMKIT, "run", "--kernel", str(tiny_guest("echo")), "-m", "64M"])
    try:
        _read_until(fd, b"echo ready")
        attrs = termios.tcgetattr(fd)
        assert not attrs[3] & termios.ECHO, "the console must put the terminal in raw mode"
        os.write(fd, b"hi there")
        _read_until(fd, b"hi there")
        os.write(fd, b"\x01x")               # Ctrl-a x: quit, as in QEMU
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


@pytest.mark.kvm
def test_interactive_console_restores_terminal(tiny_guest):
    pid, fd = pty.fork()
    if pid == 0:
        os.execv("/bin/sh", ["sh", "-c", " ".join([*KVMKIT, "run", "--kernel", str(tiny_guest("echo")),
                                                   "-m", "64M", ">/dev/null; stty -a | tr '\\n' ' '; echo END"])])
    try:
        os.write(fd, b"")
        time.sleep(1.5)
        os.write(fd, b"q")                  # the guest exits on 'q'
        out = _read_until(fd, b"END", timeout=30)
        flags = out[out.index(b"speed"):].split()
        assert b"echo" in flags and b"icanon" in flags, out   # cooked mode again
        assert b"-echo" not in flags
    finally:
        os.waitpid(pid, 0)
        os.close(fd)


@pytest.mark.kvm
def test_serial_on_a_unix_socket(tiny_guest, tmp_path):
    import socket
    path = tmp_path / "console.sock"
    proc = subprocess.Popen([*KVMKIT, "run", "--kernel", str(tiny_guest("echo")), "-m", "64M",
                             "--serial", f"unix:{path}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not path.exists():
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.connect(str(path))
        c.settimeout(20)
        c.sendall(b"ping")
        got = b""
        while b"ping" not in got:
            try:
                got += c.recv(100)
            except TimeoutError:
                raise AssertionError(f"got {got!r}; stderr {proc.stderr.read1()!r}")
        c.sendall(b"q")
        assert proc.wait(timeout=20) == 1       # the guest exits through the debug port on 'q'
        c.close()
        assert not path.exists()                # the socket is removed when the VM ends
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
@pytest.mark.kvm
def test_run_with_no_arguments_ends_at_a_shell_and_poweroff_exits_0():
    """What the README promises: `kvmkit run` alone, on a terminal, boots the
    fast guest to its busybox prompt; typed commands work; `poweroff` ends
    kvmkit with status 0.  Prints the time to the prompt."""
    started = time.monotonic()
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(sys.executable, [*KVMKIT, "run"])
    try:
        out = _read_until(fd, b"root@kvmkit:~# ", timeout=900)
        print(f"kvmkit run: shell prompt after {time.monotonic() - started:.1f} s")
        assert b"host-compat" not in out or b"syscall completed in the VMM" in out
        for typed, want in ((b"uname -r", rb"\n6\.1\.\d+\r\n"),
                            (b"cat /proc/cpuinfo | grep -c processor", rb"\n1\r\n"),
                            (b"echo hi > /tmp/f; cat /tmp/f", rb"\nhi\r\n")):
            os.write(fd, typed + b"\r")
            got = _read_until(fd, b"root@kvmkit:~# ", timeout=120)
            assert re.search(want, got), got
        os.write(fd, b"poweroff\r")
        out = _read_until(fd, b"kvmkit:", timeout=120)     # the host-compat summary, or EOF
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, out[-1000:])
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)
