"""What a jailed VM's user is given (chowned files, ACL entries on shared
directories) is written down before it is given, so a supervisor SIGKILLed
before it could give it back leaves a record the next jailed run replays.
Real files, real chown and ACL xattrs (as root), real uid locks."""

from __future__ import annotations

import os

import pytest

from kvmkit.host import acl, handover, ids

UID = 299990                      # an id of a range no other test allocates


@pytest.fixture
def lock_dir(tmp_path):
    d = tmp_path / "ids"
    d.mkdir()
    return d


@pytest.fixture
def files(tmp_path):
    disk, out, shared = tmp_path / "disk.raw", tmp_path / "serial.log", tmp_path / "snap"
    disk.write_bytes(b"x")
    os.chmod(disk, 0o400)                     # read-only to its owner: the VM's user gets rw
    out.write_bytes(b"")
    shared.mkdir()
    (shared / "memory").write_bytes(b"m")
    return disk, out, shared


def _acl_uids(path) -> set[int]:
    return {q for tag, _, q in acl._read(str(path)) if tag == acl.USER}


def _give(lock_dir, files):
    disk, out, shared = files
    lease = ids.hold(UID, lock_dir)
    assert lease is not None
    h = handover.handover_for(lease, lock_dir)
    h.give([str(disk), str(out), str(disk)], [(str(shared), False)])
    assert os.stat(disk).st_uid == UID and os.stat(disk).st_mode & 0o600 == 0o600
    assert UID in _acl_uids(shared) and UID in _acl_uids(shared / "memory")
    assert h.record.exists()
    return lease, h


def test_given_back_at_the_end(lock_dir, files):
    disk, out, shared = files
    lease, h = _give(lock_dir, files)
    h.take_back()
    lease.release()
    assert (os.stat(disk).st_uid, os.stat(disk).st_mode & 0o777) == (0, 0o400)
    assert os.stat(out).st_uid == 0
    assert UID not in _acl_uids(shared) | _acl_uids(shared / "memory")
    assert not h.record.exists()


def test_a_dead_holders_record_is_replayed_a_live_ones_is_not(lock_dir, files):
    disk, out, shared = files
    lease, h = _give(lock_dir, files)
    assert handover.take_back_abandoned(lock_dir) == []          # its VM still holds the uid
    assert os.stat(disk).st_uid == UID
    lease.release()                                              # the supervisor and its VMM died
    assert handover.take_back_abandoned(lock_dir) == [UID]
    assert (os.stat(disk).st_uid, os.stat(disk).st_mode & 0o777) == (0, 0o400)
    assert os.stat(out).st_uid == 0
    assert UID not in _acl_uids(shared) | _acl_uids(shared / "memory")
    assert not h.record.exists()
    assert handover.take_back_abandoned(lock_dir) == []


def test_a_file_someone_else_changed_since_is_left_alone(lock_dir, files):
    disk, out, _ = files
    lease, h = _give(lock_dir, files)
    os.chown(out, 1234, 1234)                                    # an operator took it meanwhile
    lease.release()
    handover.take_back_abandoned(lock_dir)
    assert os.stat(out).st_uid == 1234 and os.stat(disk).st_uid == 0


def test_a_torn_record_is_dropped(lock_dir):
    record = lock_dir / f"{UID}{handover.SUFFIX}"
    record.write_text('{"uid": 29')
    assert handover.take_back_abandoned(lock_dir) == []
    assert not record.exists()
