"""Per-VM ids: a range, locks that die with their holder, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kvmkit.errors import ConfigError, HostResourceError
from kvmkit.host import ids


def test_ids_are_distinct_while_held_and_reused_when_released(tmp_path):
    r = ids.IdRange(400000 + os.getpid() % 1000 * 4, 2)
    a, b = ids.allocate(r, tmp_path), ids.allocate(r, tmp_path)
    assert {a.uid, b.uid} == {r.base, r.base + 1} and a.gid == a.uid
    with pytest.raises(HostResourceError, match=f"all 2 of {r} are in use"):
        ids.allocate(r, tmp_path)
    a.release()
    c = ids.allocate(r, tmp_path)
    assert c.uid == a.uid
    b.release()
    c.release()


def test_a_dead_holder_frees_its_id(tmp_path):
    r = ids.IdRange(410000 + os.getpid() % 1000 * 4, 1)
    code = (f"from kvmkit.host import ids; from pathlib import Path; "
            f"l = ids.allocate(ids.IdRange({r.base}, 1), Path({str(tmp_path)!r})); import os; os._exit(0)")
    subprocess.run([sys.executable, "-c", code], check=True)
    ids.allocate(r, tmp_path).release()


@pytest.mark.parametrize("text", ["x", "100:5", "200000:0", "200000:x", "4294967290:100"])
def test_bad_ranges_are_refused(text):
    with pytest.raises(ConfigError, match=f"KVMKIT_JAIL_IDS={text!r}"):
        ids.IdRange.parse(text)


def test_lock_dir_not_creatable():
    with pytest.raises(HostResourceError, match="VM id locks in /proc/kvmkit-ids"):
        ids.allocate(ids.IdRange(), ids.Path("/proc/kvmkit-ids"))


def test_a_tap_descriptor_in_a_net_spec():
    from kvmkit.devices.virtio.config import parse_net
    assert parse_net("fd=5,mac=52:54:00:00:00:01").fd == 5
    with pytest.raises(ConfigError, match="fd='x' must be the number of an open tap descriptor"):
        parse_net("fd=x")
