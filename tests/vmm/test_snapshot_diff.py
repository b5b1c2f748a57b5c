"""Diff snapshots with the memwriter guest: a diff holds only the pages
dirtied since the VM's last snapshot (the guest's 4 MiB, not its 64 MiB),
including pages the VMM itself wrote; restoring a diff (or a diff of a
diff) gives exactly the RAM the VM had; merge folds a diff onto its base;
a base that is not the VM's last snapshot, or changed since, is refused."""

from __future__ import annotations


import pytest

from kvmkit.vmm.machine import Machine
from kvmkit.vmm.snapshot import Snapshot, SnapshotError
from kvmkit.vmm.snapshot_diff import merge
from migration_helpers import assert_same_memory, count, wait_past

pytestmark = pytest.mark.kvm
HOST_PAGE = 0x3000000          # a page the guest never touches: only the VMM writes it


def restored_equals(directory, src) -> None:
    r = Machine.restore(directory, start_paused=True)
    try:
        assert_same_memory(src, r)
        r.start()
        saved = count(r)
        r.resume()
        wait_past(r, saved + 5)          # it runs on, its checksums passing
        assert r.exit_reason is None
    finally:
        r.close()


def test_diffs_restore_and_merge(tiny_guest, machine, tmp_path):
    m = machine(tiny_guest("memwriter"))
    wait_past(m, 3)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    m.save_snapshot(a)
    wait_past(m, count(m) + 3)
    m.memory.write(HOST_PAGE, b"written by the VMM")
    m.pause()
    diff = m.save_snapshot(b, diff_from=a)
    # the guest's 1024 pages, its counter page, the VMM's page, a few more (page tables' A/D bits)
    assert (4 << 20) + 2 * 4096 <= diff.written_bytes <= (4 << 20) + 32 * 4096, diff
    snap = Snapshot.open(b)
    assert snap.base is not None and snap.base.path == a
    pages = {p for first, n in snap.body["diff-pages"] for p in range(first, first + n)}
    assert HOST_PAGE >> 12 in pages
    restored_equals(b, m)
    m.resume()
    wait_past(m, count(m) + 3)
    m.pause()
    m.save_snapshot(c, diff_from=b)                  # a diff of a diff
    restored_equals(c, m)
    with pytest.raises(SnapshotError, match="a diff can only follow the VM's last snapshot"):
        m.save_snapshot(tmp_path / "d", diff_from=a)
    merge(c)                                         # into b: b is now c's state, still on a
    assert not c.exists() and Snapshot.open(b).base.path == a
    restored_equals(b, m)
    merge(b)                                         # into a: a full snapshot of that state
    assert not b.exists() and Snapshot.open(a).base is None
    restored_equals(a, m)
    with pytest.raises(SnapshotError, match="not a diff"):
        merge(a)


def test_base_mismatch_is_refused(tiny_guest, machine, tmp_path):
    m, other = machine(tiny_guest("memwriter")), machine(tiny_guest("memwriter"))
    wait_past(m, 3)
    with pytest.raises(SnapshotError, match="not a snapshot directory"):
        m.save_snapshot(tmp_path / "x", diff_from=tmp_path)
    other.save_snapshot(tmp_path / "other")
    with pytest.raises(SnapshotError, match="taken no snapshot since it started"):
        m.save_snapshot(tmp_path / "x", diff_from=tmp_path / "other")
    base, diff = tmp_path / "base", tmp_path / "diff"
    m.save_snapshot(base)
    with pytest.raises(SnapshotError, match="base mismatch: this VM's last snapshot is"):
        m.save_snapshot(tmp_path / "x", diff_from=tmp_path / "other")
    m.save_snapshot(diff, diff_from=base)
    with pytest.raises(SnapshotError, match="shared=on needs a full snapshot"):
        Machine.restore(diff, shared_memory=True)
    m.save_snapshot(base)                            # the base replaced by a newer full snapshot
    with pytest.raises(SnapshotError, match="base mismatch: .* is not the snapshot this diff was taken on"):
        Snapshot.open(diff)
