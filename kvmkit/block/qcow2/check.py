"""Consistency check and repair, counting like ``qemu-img check``.

References are recounted from every table (header, L1/L2 of the active state
and of each snapshot, refcount structures, snapshot table) and compared with
the stored refcounts: stored > counted is a leak (wasted space), stored <
counted is a corruption (a write could reuse a cluster still in use).
Repair sets each stored refcount to the counted value and fixes COPIED bits.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field

from kvmkit.block import fileio
from kvmkit.block.image import Kind
from kvmkit.block.qcow2 import header as hdr
from kvmkit.block.qcow2.image import Qcow2Image
from kvmkit.block.qcow2.refcounts import OFFSET_MASK as RT_MASK, load_u64_table
from kvmkit.block.qcow2.snapshots import fix_copied_flags, read_snapshots
from kvmkit.block.qcow2.tables import COPIED, OFFSET_MASK, classify
from kvmkit.errors import ImageError

MAX_CHECK_CLUSTERS = 1 << 28


@dataclass
class CheckResult:
    filename: str
    corruptions: int = 0
    leaks: int = 0
    check_errors: int = 0
    corruptions_fixed: int = 0
    leaks_fixed: int = 0
    total_clusters: int = 0
    allocated_clusters: int = 0
    fragmented_clusters: int = 0
    compressed_clusters: int = 0
    image_end_offset: int = 0
    messages: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """qemu-img's: 0 clean, 2 corruptions, 3 only leaks, 1 check failed."""
        if self.check_errors:
            return 1
        if self.corruptions:
            return 2
        if self.leaks:
            return 3
        return 0

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "image-end-offset": self.image_end_offset,
            "total-clusters": self.total_clusters,
            "check-errors": self.check_errors,
            "allocated-clusters": self.allocated_clusters,
            "filename": self.filename,
            "format": "qcow2",
            "fragmented-clusters": self.fragmented_clusters,
            "compressed-clusters": self.compressed_clusters,
        }
        for key, value in (("corruptions", self.corruptions), ("leaks", self.leaks),
                           ("corruptions-fixed", self.corruptions_fixed),
                           ("leaks-fixed", self.leaks_fixed)):
            if value:
                out[key] = value
        return out


class _Counter:
    """Recounts references; out-of-file references are reported, not stored."""

    def __init__(self, img: Qcow2Image, result: CheckResult) -> None:
        self.img = img
        self.result = result
        self.cs = img.cs
        self.file_end = img._file_end()
        self.nclusters = -(-self.file_end // self.cs)
        if self.nclusters > MAX_CHECK_CLUSTERS:
            raise ImageError(f"{img.path}: file is too large to check")
        self.refs = array("Q", bytes(8 * self.nclusters))

    def error(self, message: str) -> None:
        self.result.corruptions += 1
        self.result.messages.append(f"ERROR {message}")

    def add(self, offset: int, length: int, what: str) -> bool:
        if length <= 0:
            return True
        first, last = offset // self.cs, (offset + length - 1) // self.cs
        if last >= self.nclusters:
            self.error(f"{what} at {offset:#x} is past the end of the file")
            return False
        for c in range(first, last + 1):
            self.refs[c] += 1
        return True

    def walk(self, l1: array, active: bool, name: str) -> None:
        img, cs, version = self.img, self.cs, self.img.header.version
        prev_host = -1
        for i, e in enumerate(l1):
            l2off = e & OFFSET_MASK
            if not l2off:
                continue
            if l2off % cs:
                self.error(f"{name} L1 entry {i}: L2 table {l2off:#x} is not cluster aligned")
                continue
            if not self.add(l2off, cs, f"{name} L2 table"):
                continue
            l2 = load_u64_table(fileio.pread_exact(img.fd, l2off, cs))
            for j, entry in enumerate(l2):
                kind, host = classify(entry, version)
                if kind is Kind.COMPRESSED:
                    if entry & COPIED:
                        self.error(f"compressed cluster with the COPIED flag: "
                                   f"l2_entry={entry:#x}")
                    if active:
                        self.result.compressed_clusters += 1
                        self.result.allocated_clusters += 1
                    chost, clen = img.codec.decode(entry)
                    self.add(chost & ~511, ((chost + clen - 1) | 511) + 1 - (chost & ~511),
                             "compressed cluster")
                    continue
                if not host:
                    continue
                if host % cs:
                    self.error(f"l2_entry={entry:#x}: data cluster is not cluster aligned")
                    continue
                if active and kind is Kind.DATA:
                    self.result.allocated_clusters += 1
                    if prev_host >= 0 and host != prev_host + cs:
                        self.result.fragmented_clusters += 1
                    prev_host = host
                self.add(host, cs, "data cluster")


def _count(img: Qcow2Image, result: CheckResult) -> _Counter:
    h = img.header
    cnt = _Counter(img, result)
    cnt.add(0, img.cs, "header")
    cnt.add(h.l1_table_offset, h.l1_size * 8, "L1 table")
    cnt.walk(img.l1, True, "active")
    try:
        snaps = read_snapshots(img)
    except ImageError as exc:
        cnt.error(str(exc))
        snaps = []
    if snaps:
        cnt.add(h.snapshots_offset, sum(len(s.pack()) for s in snaps), "snapshot table")
    for s in snaps:
        if cnt.add(s.l1_table_offset, s.l1_size * 8, f"snapshot {s.name!r} L1 table"):
            l1 = load_u64_table(fileio.pread_exact(img.fd, s.l1_table_offset, s.l1_size * 8))
            cnt.walk(l1, False, f"snapshot {s.name!r}")
    refs = img.refs
    cnt.add(refs.table_offset, refs.table_clusters * img.cs, "refcount table")
    for t, e in enumerate(refs.table):
        off = e & RT_MASK
        if off:
            if off % img.cs:
                cnt.error(f"refcount block {t} at {off:#x} is not cluster aligned")
            else:
                cnt.add(off, img.cs, f"refcount block {t}")
    return cnt


def _compare(img: Qcow2Image, cnt: _Counter, result: CheckResult
             ) -> list[tuple[int, int, int]]:
    """(cluster, stored, counted) for every mismatch; counts leaks and corruptions."""
    out = []
    for c in range(cnt.nclusters):
        try:
            stored = img.refs.get(c)
        except ImageError as exc:
            result.check_errors += 1
            result.messages.append(f"ERROR cannot read the refcount of cluster {c}: {exc}")
            break
        counted = cnt.refs[c]
        if stored != counted:
            out.append((c, stored, counted))
            if stored < counted:
                result.corruptions += 1
                result.messages.append(f"ERROR cluster {c} refcount={stored} "
                                       f"reference={counted}")
            else:
                result.leaks += 1
                result.messages.append(f"Leaked cluster {c} refcount={stored} "
                                       f"reference={counted}")
    return out


def _copied_errors(img: Qcow2Image, result: CheckResult) -> None:
    version = img.header.version
    for i, e in enumerate(img.l1):
        l2off = e & OFFSET_MASK
        if not l2off or l2off % img.cs or l2off + img.cs > img._file_end():
            continue
        _flag(img, result, l2off, e, f"L2 cluster: l1_index={i} l1_entry={e:x}")
        for entry in load_u64_table(fileio.pread_exact(img.fd, l2off, img.cs)):
            kind, host = classify(entry, version)
            if kind is not Kind.COMPRESSED and host and not host % img.cs:
                _flag(img, result, host, entry, f"data cluster: l2_entry={entry:x}")


def _flag(img: Qcow2Image, result: CheckResult, host: int, entry: int, what: str) -> None:
    """COPIED must be set exactly when the refcount is 1 (in the active tables)."""
    rc = img.refs.get(host >> img.cluster_bits)
    if (rc == 1) != bool(entry & COPIED):
        result.corruptions += 1
        result.messages.append(f"ERROR OFLAG_COPIED {what} refcount={rc}")


def _scan(img: Qcow2Image) -> tuple[CheckResult, _Counter, list[tuple[int, int, int]]]:
    result = CheckResult(img.path)
    cnt = _count(img, result)
    mismatches = _compare(img, cnt, result)
    if not result.check_errors:
        _copied_errors(img, result)
    result.total_clusters = -(-img.size // img.cs)
    result.image_end_offset = max((c + 1 for c in range(cnt.nclusters - 1, -1, -1)
                                   if cnt.refs[c]), default=1) * img.cs
    return result, cnt, mismatches


def check_image(img: Qcow2Image, repair: bool = False) -> CheckResult:
    """Check (and with ``repair``, fix refcounts and COPIED bits of) a qcow2 image."""
    with img.lock:
        if not img.readonly:
            img.flush_metadata()
        result, cnt, mismatches = _scan(img)
        if not repair or img.readonly or result.check_errors:
            return result
        if not (result.corruptions or result.leaks or img.header.incompatible_features
                & (hdr.INCOMPAT_CORRUPT | hdr.INCOMPAT_DIRTY)):
            return result
        img.refs.extra_used = lambda c: c < cnt.nclusters and cnt.refs[c] > 0
        try:
            for c, stored, counted in sorted(mismatches, key=lambda m: m[1] > m[2]):
                img.refs.set(c, counted)
            img.refs.write_dirty()
            fix_copied_flags(img)
            img.flush_metadata()
        finally:
            img.refs.extra_used = None
        flags = img.header.incompatible_features & ~(hdr.INCOMPAT_CORRUPT | hdr.INCOMPAT_DIRTY)
        img._barrier()
        img.write_header(img.header.with_(incompatible_features=flags))
        img._barrier()
        after, _, _ = _scan(img)
        after.corruptions_fixed = max(0, result.corruptions - after.corruptions)
        after.leaks_fixed = max(0, result.leaks - after.leaks)
        after.messages = [m.replace("ERROR", "Repairing", 1).replace("Leaked", "Repairing", 1)
                          for m in result.messages] + after.messages
        return after
