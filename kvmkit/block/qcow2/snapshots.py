"""Internal snapshots: a saved copy of the L1 table plus shared refcounts.

Taking a snapshot copies the active L1 and adds one reference to every L2
table and data cluster reachable from it, so that later writes copy first.
Every change increments before anything points at the new state and
decrements only after nothing does, so a crash leaves at worst leaks.
"""

from __future__ import annotations

import struct
import time
from array import array
from dataclasses import dataclass

from kvmkit.block import fileio
from kvmkit.block.image import Kind
from kvmkit.block.qcow2.image import Qcow2Image
from kvmkit.block.qcow2.refcounts import dump_u64_table, load_u64_table
from kvmkit.block.qcow2.tables import COPIED, OFFSET_MASK, check_host_offset, classify
from kvmkit.errors import ImageError

_ENTRY = struct.Struct(">QIHHIIQII")     # 40 bytes
MAX_SNAPSHOTS = 65536
MAX_TABLE_BYTES = 64 << 20
MAX_EXTRA = 1024
MAX_SNAPSHOT_L1_BYTES = 32 << 20
MAX_NAME_BYTES = 0xFFFF                 # the name length is a u16 in the table entry


@dataclass(frozen=True)
class Snapshot:
    id: str
    name: str
    l1_table_offset: int
    l1_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    disk_size: int | None
    icount: int | None
    extra: bytes = b""

    def pack(self) -> bytes:
        extra = bytearray(self.extra)
        fields = [self.vm_state_size, self.disk_size or 0]
        if self.icount is not None:
            fields.append(self.icount)
        need = 8 * len(fields)
        if len(extra) < need:
            extra += bytes(need - len(extra))
        struct.pack_into(f">{len(fields)}Q", extra, 0, *fields)
        ident, name = self.id.encode(), self.name.encode()
        out = _ENTRY.pack(self.l1_table_offset, self.l1_size, len(ident), len(name),
                          self.date_sec, self.date_nsec, self.vm_clock_nsec,
                          min(self.vm_state_size, 0xFFFFFFFF), len(extra))
        out += bytes(extra) + ident + name
        return out + bytes(-len(out) % 8)


def read_snapshots(img: Qcow2Image) -> list[Snapshot]:
    """Parse and validate the snapshot table; garbage gives an ImageError."""
    h = img.header
    if h.nb_snapshots == 0:
        return []
    if h.nb_snapshots > MAX_SNAPSHOTS:
        raise ImageError(f"{img.path}: snapshot table claims {h.nb_snapshots} snapshots")
    file_end = img._file_end()
    off = h.snapshots_offset
    if off == 0 or off >= file_end:
        raise ImageError(f"{img.path}: snapshot table at {off:#x} lies outside the file")
    raw = fileio.pread_exact(img.fd, off, min(MAX_TABLE_BYTES, file_end - off))
    snaps: list[Snapshot] = []
    pos = 0
    for _ in range(h.nb_snapshots):
        if pos + _ENTRY.size > len(raw):
            raise ImageError(f"{img.path}: snapshot table is truncated")
        (l1_off, l1_size, id_len, name_len, sec, nsec, clock, vmsize32,
         extra_len) = _ENTRY.unpack_from(raw, pos)
        if extra_len > MAX_EXTRA:
            raise ImageError(f"{img.path}: snapshot entry has {extra_len} bytes of extra data")
        end = pos + _ENTRY.size + extra_len + id_len + name_len
        if end > len(raw):
            raise ImageError(f"{img.path}: snapshot table is truncated")
        extra = raw[pos + _ENTRY.size:pos + _ENTRY.size + extra_len]
        p = pos + _ENTRY.size + extra_len
        ident = raw[p:p + id_len].decode("utf-8", "replace")
        name = raw[p + id_len:end].decode("utf-8", "replace")
        check_host_offset(l1_off, img.cs, f"snapshot {name!r}'s L1 table")
        if l1_size * 8 > MAX_SNAPSHOT_L1_BYTES or l1_off + l1_size * 8 > file_end \
                or (l1_size and l1_off == 0):
            raise ImageError(f"{img.path}: snapshot {name!r} has an invalid L1 table "
                             f"({l1_size} entries at {l1_off:#x})")
        vmsize = struct.unpack_from(">Q", extra)[0] if extra_len >= 8 else vmsize32
        disk = struct.unpack_from(">Q", extra, 8)[0] if extra_len >= 16 else None
        icount = struct.unpack_from(">Q", extra, 16)[0] if extra_len >= 24 else None
        snaps.append(Snapshot(ident, name, l1_off, l1_size, sec, nsec, clock, vmsize, disk,
                              icount, bytes(extra)))
        pos = end + (-end % 8)
    return snaps


def _write_table(img: Qcow2Image, snaps: list[Snapshot]) -> None:
    """Write a new table elsewhere, point the header at it, then free the old one."""
    data = b"".join(s.pack() for s in snaps)
    if len(data) > MAX_TABLE_BYTES:
        raise ImageError("too many snapshots for the snapshot table")
    new_off = 0
    nclusters = -(-len(data) // img.cs)
    if data:
        new_off = img.refs.allocate(nclusters)
        fileio.pwrite_all(img.fd, data, new_off)
    img.refs.write_dirty()
    img._barrier()
    old_off, old_len = img.header.snapshots_offset, _table_size(img)
    img.write_header(img.header.with_(snapshots_offset=new_off, nb_snapshots=len(snaps)))
    img._barrier()
    if old_off and old_len:
        img.refs.free(old_off, -(-old_len // img.cs))
        img.refs.write_dirty()


def _table_size(img: Qcow2Image) -> int:
    if not img.header.nb_snapshots:
        return 0
    return sum(len(s.pack()) for s in read_snapshots(img))


def _read_l1(img: Qcow2Image, snap: Snapshot) -> array:
    return load_u64_table(fileio.pread_exact(img.fd, snap.l1_table_offset, snap.l1_size * 8))


def update_tree_refcounts(img: Qcow2Image, l1: array, addend: int) -> None:
    """Add ``addend`` to every L2 table and cluster reachable from ``l1``."""
    version, cb = img.header.version, img.cluster_bits
    for e in l1:
        l2off = e & OFFSET_MASK
        if not l2off:
            continue
        check_host_offset(l2off, img.cs, "an L1 entry")
        for entry in img.l2cache.get(l2off):
            kind, host = classify(entry, version)
            if kind is Kind.COMPRESSED:
                for c in img.codec.clusters(entry):
                    img.refs.update(c, addend)
            elif host:
                img.refs.update(host >> cb, addend)
        if img.refs.update(l2off >> cb, addend) == 0:
            img.l2cache.drop(l2off)


def fix_copied_flags(img: Qcow2Image) -> int:
    """Make the active tables' COPIED bits say exactly "refcount is 1"; returns fixes."""
    version, cb = img.header.version, img.cluster_bits
    fixed = 0
    for i, e in enumerate(img.l1):
        l2off = e & OFFSET_MASK
        if not l2off:
            continue
        want = COPIED if img.refs.get(l2off >> cb) == 1 else 0
        if e & COPIED != want:
            img.l1[i] = (e & ~COPIED) | want
            img._dirty_l1.add(i)
            fixed += 1
        l2 = img.l2cache.get(l2off)
        for j, entry in enumerate(l2):
            kind, host = classify(entry, version)
            if kind is Kind.COMPRESSED or not host:
                continue
            want = COPIED if img.refs.get(host >> cb) == 1 else 0
            if entry & COPIED != want:
                l2[j] = (entry & ~COPIED) | want
                img.l2cache.mark_dirty(l2off)
                fixed += 1
    return fixed


def _find(snaps: list[Snapshot], name: str) -> Snapshot:
    for s in snaps:
        if s.id == name or s.name == name:
            return s
    raise ImageError(f"no snapshot named {name!r}")


def list_snapshots(img: Qcow2Image) -> list[Snapshot]:
    return read_snapshots(img)


def create_snapshot(img: Qcow2Image, name: str) -> Snapshot:
    img.check_writable()
    with img.lock:
        snaps = read_snapshots(img)
        if len(name.encode()) > MAX_NAME_BYTES:
            raise ImageError(f"snapshot name is {len(name.encode())} bytes; qcow2 allows at most {MAX_NAME_BYTES}")
        if any(s.name == name for s in snaps):
            raise ImageError(f"a snapshot named {name!r} already exists")
        img.flush_metadata()
        l1_bytes = dump_u64_table(array("Q", (e & ~COPIED for e in img.l1)))
        l1_off = img.refs.allocate(max(1, -(-len(l1_bytes) // img.cs))) if l1_bytes else 0
        if l1_bytes:
            fileio.pwrite_all(img.fd, l1_bytes, l1_off)
        update_tree_refcounts(img, img.l1, +1)
        now = time.time_ns()
        ids = [int(s.id) for s in snaps if s.id.isdigit()]
        snap = Snapshot(str(max(ids, default=0) + 1), name, l1_off, len(img.l1),
                        now // 10**9, now % 10**9, 0, 0, img.size, None)
        img.refs.write_dirty()
        img._barrier()
        _write_table(img, snaps + [snap])
        fix_copied_flags(img)
        img.flush_metadata()
        img._barrier()
        return snap


def delete_snapshot(img: Qcow2Image, name: str) -> None:
    img.check_writable()
    with img.lock:
        snaps = read_snapshots(img)
        snap = _find(snaps, name)
        img.flush_metadata()
        _write_table(img, [s for s in snaps if s is not snap])
        l1 = _read_l1(img, snap)
        update_tree_refcounts(img, l1, -1)
        if snap.l1_size:
            img.refs.free(snap.l1_table_offset, -(-snap.l1_size * 8 // img.cs))
        fix_copied_flags(img)
        img.flush_metadata()
        img._barrier()


def apply_snapshot(img: Qcow2Image, name: str) -> None:
    """Make the snapshot's contents (and size) the image's current state."""
    img.check_writable()
    with img.lock:
        snap = _find(read_snapshots(img), name)
        img.flush_metadata()
        snap_l1 = _read_l1(img, snap)
        update_tree_refcounts(img, snap_l1, +1)
        img.refs.write_dirty()
        img._barrier()
        if len(snap_l1) > len(img.l1):
            img._grow_l1(len(snap_l1))
        old_l1 = array("Q", img.l1)
        new_l1 = array("Q", snap_l1)
        new_l1.extend([0] * (len(img.l1) - len(snap_l1)))
        img.l1 = new_l1
        img.write_l1(list(range(len(new_l1))))
        img._barrier()
        update_tree_refcounts(img, old_l1, -1)
        if snap.disk_size is not None and snap.disk_size != img.size:
            img.write_header(img.header.with_(size=snap.disk_size))
        fix_copied_flags(img)
        img.flush_metadata()
        img._barrier()
