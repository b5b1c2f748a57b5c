"""The start cache's rules, on the echo tiny guest (it prints "echo ready"
and echoes what it is sent): it saves at a quiet prompt and the entry
restores; it does not save once anything has been typed (the input might
sit unechoed in the guest and replay into every later run); its key
changes with kvmkit's own source; a new entry removes the same guest's
entries written by other code."""

from __future__ import annotations

import json
import time

import pytest

from kvmkit.vmm import start_cache
from kvmkit.vmm.machine import Machine

pytestmark = pytest.mark.kvm
PROMPT = b"echo ready\r\n"


def test_saves_at_a_quiet_prompt_and_the_entry_restores(tiny_guest, machine, tmp_path):
    m = machine(tiny_guest("echo"))
    saver = start_cache.PromptSaver(m, PROMPT, root=tmp_path, timeout=30).start()
    assert saver.done.wait(60) and saver.error is None
    assert saver.saved is not None and (saver.saved / start_cache.KEY_FILE).exists()
    m.console.send(b"after")                             # the saved guest goes on
    m.console.expect(b"after", timeout=10)
    entry = start_cache.lookup(m.config, root=tmp_path)
    assert entry is not None and entry.screen == b""     # the line after "echo ready\r\n"
    r = start_cache.restore(entry).start()
    try:
        r.console.send(b"restored")
        r.console.expect(b"restored", timeout=10)
        assert b"after" not in r.console.output
    finally:
        r.close()


def test_input_typed_at_the_prompt_waits_for_the_save_and_is_not_in_it(tiny_guest, machine, tmp_path):
    m = machine(tiny_guest("echo"))
    saver = start_cache.PromptSaver(m, PROMPT, root=tmp_path, timeout=30).start()
    m.console.expect(PROMPT, timeout=30)                 # the output itself started the hold:
    assert m.console.input_held                          # no keystroke can slip in before it
    m.console.send(b"fast")                             # a script typing the moment the prompt shows (no q: it ends the echo guest)
    assert saver.done.wait(60) and saver.error is None and saver.saved is not None
    m.console.expect(b"fast", timeout=10)               # typed in after the save, not lost
    r = start_cache.restore(start_cache.lookup(m.config, root=tmp_path)).start()
    try:
        r.console.send(b"later")
        r.console.expect(b"later", timeout=10)
        time.sleep(0.5)
        assert b"fast" not in r.console.output          # not saved into the entry
    finally:
        r.close()


def test_no_save_once_input_was_typed(tiny_guest, machine, tmp_path):
    m = machine(tiny_guest("echo"), start=False)
    m.console.send(b"ab")                                # typed before the guest reads it
    m.start()
    m.console.expect(b"ab", timeout=10)
    saver = start_cache.PromptSaver(m, PROMPT + b"ab", root=tmp_path, timeout=5).start()
    assert saver.done.wait(30)
    assert saver.saved is None and not any(tmp_path.iterdir())


def test_an_entry_of_other_code_is_not_found_and_is_dropped(tiny_guest, tmp_path, monkeypatch):
    from kvmkit.vmm.config import VmConfig
    config = VmConfig.build(tiny_guest("echo"), memory="64M")
    key = start_cache.cache_key(config)
    assert len(key["code"]) == 64
    old = dict(key, code="0" * 64)                       # the same guest, saved by other code
    other_guest = dict(key, memory=key["memory"] * 2)
    for k in (old, other_guest):
        d = tmp_path / start_cache._digest(k)
        d.mkdir()
        (d / start_cache.KEY_FILE).write_text(json.dumps(k))
        (d / "vmstate").write_bytes(b"x")
    assert start_cache.lookup(config, root=tmp_path) is None
    start_cache._drop_superseded(tmp_path, key)
    assert not (tmp_path / start_cache._digest(old)).exists()
    assert (tmp_path / start_cache._digest(other_guest)).exists()
