"""``virsh console`` on a real pseudo-terminal against the echo guest (it
echoes what COM1 receives): attach, type, detach with Ctrl-], the VM keeps
running, attach again; one session at a time; a terminal is required."""

from __future__ import annotations

import os
import sys

import pytest

from .helpers import REPO, PtyConsole, tiny_xml

pytestmark = pytest.mark.kvm


def _console(state_dir, name: str) -> PtyConsole:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return PtyConsole([sys.executable, "-m", "kvmkit.cli.main", "virsh", "-c", str(state_dir), "console", name], env)


def test_attach_type_detach_attach_again(host, state_dir, tiny_guest, virsh):
    host.define(tiny_xml("e", tiny_guest("echo")))
    host.start("e")
    first = _console(state_dir, "e")
    first.expect(rb"Connected to domain 'e'\r?\nEscape character is \^\] \(Ctrl \+ \]\)", 30)
    first.expect(rb"echo ready", 30)                  # the first client gets what was printed before it came
    first.send(b"hello")
    first.expect(rb"hello", 30)
    second = _console(state_dir, "e")                 # one session at a time, as virsh
    second.expect(rb"Active console session exists for this domain", 30)
    assert second.proc.wait(30) == 1
    assert first.detach() == 0
    assert virsh("-q", "domstate", "e").stdout == "running\n"
    again = _console(state_dir, "e")
    again.expect(rb"Escape character is", 30)
    again.send(b"again")
    again.expect(rb"again", 30)
    assert again.detach() == 0
    assert virsh("-q", "domstate", "e").stdout == "running\n"


def test_console_needs_a_terminal_and_a_running_domain(host, tiny_guest, virsh):
    host.define(tiny_xml("e", tiny_guest("echo")))
    res = virsh("console", "e")
    assert res.returncode == 1 and "Cannot run interactive console without a controlling TTY" in res.stderr
