"""Initramfs contents, and the kvmkit.run encodings against busybox's own decoders."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from kvmkit.guest import cpio, initramfs

COMMANDS = ["echo hello", "uname -r; nproc", "printf '%s\\n' \"a  b\" 'c+d' 100% \\\\x41 $((1+2))"]


def _archive_names(members: list[cpio.Entry], cpio_tool: str) -> list[str]:
    buf = io.BytesIO()
    cpio.write(buf, members)
    out = subprocess.run([cpio_tool, "-t", "--quiet"], input=buf.getvalue(), capture_output=True, check=True)
    return out.stdout.decode().split()


def test_entries_have_init_busybox_links_devices_and_module_list(cpio_tool: str) -> None:
    members = initramfs.entries(b"BB", ["bin/sh", "sbin/poweroff", "usr/bin/setsid"], initramfs.rootfs_files(),
                                {"6.1.0-1-amd64/kernel/a.ko": b"A", "6.1.0-1-amd64/kernel/b.ko": b"B"})
    names = _archive_names(members, cpio_tool)
    for name in ("init", "bin/busybox", "bin/sh", "sbin/poweroff", "dev/console", "etc/inittab",
                 "etc/kvmkit/rc", "etc/kvmkit/console", "etc/fstab", "etc/passwd", "etc/acpi/PWRF/00000080",
                 "dev/null", "proc", "sys", "tmp", "lib/modules/6.1.0-1-amd64/kernel/a.ko",
                 "etc/kvmkit/modules"):
        assert name in names
    # Only the links programs exec by path: the shell runs the rest by name.
    assert "usr/bin/setsid" not in names
    # Parents precede children, as the kernel's unpacker needs.
    for name in names:
        parent = name.rsplit("/", 1)[0]
        assert "/" not in name or names.index(parent) < names.index(name)
    module_list = next(m for m in members if m.name == initramfs.MODULE_LIST)
    assert module_list.data == b"6.1.0-1-amd64/kernel/a.ko\n6.1.0-1-amd64/kernel/b.ko\n"
    init = next(m for m in members if m.name == "init")
    assert init.data == b"/bin/busybox"                    # busybox init reads /etc/inittab
    for script in ("etc/kvmkit/rc", "etc/kvmkit/console", "etc/acpi/PWRF/00000080"):
        assert next(m for m in members if m.name == script).mode & 0o777 == 0o755


def test_fast_guest_has_no_module_list(cpio_tool: str) -> None:
    names = _archive_names(initramfs.entries(b"BB", ["bin/sh"], initramfs.rootfs_files()), cpio_tool)
    assert initramfs.MODULE_LIST not in names


def test_real_busybox_applets_cover_what_init_uses(busybox_binary: Path) -> None:
    applets = {p.rsplit("/", 1)[-1] for p in initramfs.applets(busybox_binary)}
    used = {"init", "sh", "mount", "insmod", "acpid", "base64", "httpd", "cttyhack", "poweroff", "reboot"}
    assert used <= applets
    assert initramfs.LINKS <= {p for p in initramfs.applets(busybox_binary)}


def test_shell_runs_applets_without_links(busybox_binary: Path, tmp_path: Path) -> None:
    """The archive leaves out most applet links: busybox's shell must find
    applets by name with no link and no PATH (FEATURE_SH_STANDALONE)."""
    out = subprocess.run([str(busybox_binary), "sh", "-c", "PATH=/nonexistent; basename /a/b; uname -s"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["b", "Linux"]


@pytest.mark.parametrize("encoding", ["b64", "url"])
@pytest.mark.parametrize("command", COMMANDS)
def test_run_parameter_decodes_back_in_busybox(busybox_binary: Path, tmp_path: Path,
                                               encoding: str, command: str) -> None:
    value = initramfs.run_parameter(command, encoding).removeprefix("kvmkit.run=")
    assert " " not in value
    # The same decoding lines /init uses, run by the real (static) busybox on the host.
    script = ('case "$1" in b64:*) c="$(echo "${1#b64:}" | base64 -d)" ;; *) c="$(httpd -d "$1")" ;; esac;'
              ' printf %s "$c"')
    out = subprocess.run([str(busybox_binary), "sh", "-c", script, "sh", value], capture_output=True, check=True)
    assert out.stdout.decode() == command


def test_init_scripts_use_the_same_decoding() -> None:
    console = (initramfs.ROOTFS / "etc/kvmkit/console").read_text()
    assert 'b64:*) command="$(echo "${run#b64:}" | base64 -d)" ;;' in console
    assert '*) command="$(httpd -d "$run")" ;;' in console
    assert 'echo "kvmkit-guest: run exit=$?"' in console
    assert 'echo "kvmkit-guest: init started"' in (initramfs.ROOTFS / "etc/kvmkit/rc").read_text()


@pytest.mark.parametrize("script", ["etc/kvmkit/rc", "etc/kvmkit/console", "etc/acpi/PWRF/00000080"])
def test_scripts_parse_in_busybox(busybox_binary: Path, script: str) -> None:
    subprocess.run([str(busybox_binary), "sh", "-n", str(initramfs.ROOTFS / script)], check=True)
