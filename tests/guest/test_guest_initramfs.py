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
    members = initramfs.entries(b"BB", ["bin/sh", "sbin/poweroff", "usr/bin/setsid"], b"#!/bin/sh\n",
                                {"6.1.0-1-amd64/kernel/a.ko": b"A", "6.1.0-1-amd64/kernel/b.ko": b"B"})
    names = _archive_names(members, cpio_tool)
    for name in ("init", "bin/busybox", "bin/sh", "sbin/poweroff", "usr/bin/setsid", "dev/console",
                 "dev/null", "proc", "sys", "tmp", "lib/modules/6.1.0-1-amd64/kernel/a.ko",
                 "etc/kvmkit/modules"):
        assert name in names
    # Parents precede children, as the kernel's unpacker needs.
    for name in names:
        parent = name.rsplit("/", 1)[0]
        assert "/" not in name or names.index(parent) < names.index(name)
    module_list = next(m for m in members if m.name == initramfs.MODULE_LIST)
    assert module_list.data == b"6.1.0-1-amd64/kernel/a.ko\n6.1.0-1-amd64/kernel/b.ko\n"
    assert next(m for m in members if m.name == "init").mode & 0o777 == 0o755


def test_fast_guest_has_no_module_list(cpio_tool: str) -> None:
    names = _archive_names(initramfs.entries(b"BB", ["bin/sh"], b"#!/bin/sh\n"), cpio_tool)
    assert initramfs.MODULE_LIST not in names


def test_real_busybox_applets_cover_what_init_uses(busybox_binary: Path) -> None:
    applets = {p.rsplit("/", 1)[-1] for p in initramfs.applets(busybox_binary)}
    used = {"sh", "mount", "mkdir", "cat", "insmod", "base64", "httpd", "setsid", "cttyhack", "poweroff", "sync"}
    assert used <= applets


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


def test_init_script_uses_the_same_decoding() -> None:
    text = initramfs.INIT_SCRIPT.read_text()
    assert 'b64:*) command="$(echo "${run#b64:}" | base64 -d)" ;;' in text
    assert '*) command="$(httpd -d "$run")" ;;' in text
    assert 'echo "kvmkit-guest: init started"' in text and 'echo "kvmkit-guest: run exit=$?"' in text
