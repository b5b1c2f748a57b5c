"""The qcow2 header (first cluster): fields, header extensions, feature bits.

Parsing validates everything later code trusts (cluster size, table offsets
aligned, sizes bounded) so that a hostile header is rejected here with a
message, before any table is read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace

from kvmkit.errors import ImageError

MAGIC = b"QFI\xfb"

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

#: Names QEMU writes in its feature table; used when we must name a bit.
KNOWN_FEATURES: dict[tuple[int, int], str] = {
    (0, 0): "dirty bit", (0, 1): "corrupt bit", (0, 2): "external data file",
    (0, 3): "compression type", (0, 4): "extended L2 entries",
    (1, 0): "lazy refcounts", (2, 0): "bitmaps", (2, 1): "raw external data",
}

EXT_END = 0
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_CRYPTO = 0x0537BE77
EXT_DATA_FILE = 0x44415441

_V2 = struct.Struct(">4sIQIIQIIQQIIQ")   # 72 bytes
_V3 = struct.Struct(">QQQII")             # 32 more bytes: through header_length

MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
MAX_L1_BYTES = 32 << 20           # QEMU's implementation limit
MAX_REFTABLE_BYTES = 8 << 20      # ditto
MAX_BACKING_NAME = 1023


@dataclass(frozen=True)
class Qcow2Header:
    """A parsed header. ``extensions`` keeps unknown extensions to write them back."""

    version: int
    cluster_bits: int
    size: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int = 0
    snapshots_offset: int = 0
    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = 104
    compression_type: int = 0
    crypt_method: int = 0
    backing_file: str | None = None
    backing_format: str | None = None
    feature_names: dict[tuple[int, int], str] = field(default_factory=dict, compare=False)
    extensions: tuple[tuple[int, bytes], ...] = ()

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    def feature_name(self, kind: int, bit: int) -> str:
        return self.feature_names.get((kind, bit)) or KNOWN_FEATURES.get((kind, bit)) \
            or f"unknown {('incompatible', 'compatible', 'autoclear')[kind]} feature bit {bit}"

    def with_(self, **changes: object) -> Qcow2Header:
        return replace(self, **changes)  # type: ignore[arg-type]

    # -- parsing ----------------------------------------------------------------------
    @classmethod
    def parse(cls, buf: bytes, file_size: int, path: str = "image") -> Qcow2Header:
        if len(buf) < _V2.size:
            raise ImageError(f"{path}: file is too short to be a qcow2 image")
        (magic, version, backing_off, backing_size, cluster_bits, size, crypt, l1_size,
         l1_off, rt_off, rt_clusters, nb_snap, snap_off) = _V2.unpack_from(buf)
        if magic != MAGIC:
            raise ImageError(f"{path}: not a qcow2 image (bad magic)")
        if version not in (2, 3):
            raise ImageError(f"{path}: unsupported qcow2 version {version} (2 and 3 are)")
        if not MIN_CLUSTER_BITS <= cluster_bits <= MAX_CLUSTER_BITS:
            raise ImageError(f"{path}: cluster size 2^{cluster_bits} is out of range "
                             "(512 bytes to 2 MiB)")
        cs = 1 << cluster_bits
        incompat = compat = autoclear = 0
        refcount_order, header_length, compression_type = 4, 72, 0
        if version == 3:
            if len(buf) < 104:
                raise ImageError(f"{path}: truncated qcow2 v3 header")
            incompat, compat, autoclear, refcount_order, header_length = \
                _V3.unpack_from(buf, 72)
            if header_length < 104 or header_length % 8 or header_length > cs \
                    or header_length > len(buf):
                raise ImageError(f"{path}: invalid header length {header_length}")
            if header_length > 104:
                compression_type = buf[104]
        if refcount_order > 6:
            raise ImageError(f"{path}: invalid refcount order {refcount_order}")
        if crypt:
            raise ImageError(f"{path}: encrypted qcow2 images are not supported")
        if size >> 62:
            raise ImageError(f"{path}: virtual size {size} is too large")
        for name, off in (("L1 table", l1_off), ("refcount table", rt_off),
                          ("snapshot table", snap_off)):
            if off % cs:
                raise ImageError(f"{path}: {name} offset {off:#x} is not aligned to "
                                 f"the cluster size ({cs})")
        if l1_size * 8 > MAX_L1_BYTES:
            raise ImageError(f"{path}: L1 table of {l1_size} entries is too large")
        l2_entries = cs // 8
        needed_l1 = -(-size // (cs * l2_entries))
        if l1_size < needed_l1:
            raise ImageError(f"{path}: L1 table ({l1_size} entries) is too small for "
                             f"the virtual size {size}")
        if l1_size and (l1_off == 0 or l1_off + l1_size * 8 > file_size):
            raise ImageError(f"{path}: L1 table at {l1_off:#x} lies outside the file")
        if rt_clusters == 0 or rt_clusters * cs > MAX_REFTABLE_BYTES:
            raise ImageError(f"{path}: refcount table of {rt_clusters} clusters is invalid")
        if rt_off == 0 or rt_off + rt_clusters * cs > file_size:
            raise ImageError(f"{path}: refcount table at {rt_off:#x} lies outside the file")
        ext_area_end = cs if not backing_off else min(cs, backing_off)
        exts, fmt, names = cls._parse_extensions(buf[:min(len(buf), cs)],
                                                 header_length, ext_area_end, path)
        backing = None
        if backing_off:
            if backing_size > MAX_BACKING_NAME or backing_size == 0:
                raise ImageError(f"{path}: backing file name length {backing_size} is invalid")
            if backing_off + backing_size > len(buf):
                raise ImageError(f"{path}: backing file name lies outside the first cluster")
            raw = buf[backing_off:backing_off + backing_size]
            try:
                backing = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ImageError(f"{path}: backing file name is not valid UTF-8") from None
            if "\0" in backing:
                raise ImageError(f"{path}: backing file name contains a NUL byte")
        return cls(version=version, cluster_bits=cluster_bits, size=size, l1_size=l1_size,
                   l1_table_offset=l1_off, refcount_table_offset=rt_off,
                   refcount_table_clusters=rt_clusters, nb_snapshots=nb_snap,
                   snapshots_offset=snap_off, incompatible_features=incompat,
                   compatible_features=compat, autoclear_features=autoclear,
                   refcount_order=refcount_order, header_length=header_length,
                   compression_type=compression_type, crypt_method=crypt,
                   backing_file=backing, backing_format=fmt, feature_names=names,
                   extensions=tuple(exts))

    @staticmethod
    def _parse_extensions(buf: bytes, start: int, end: int, path: str
                          ) -> tuple[list[tuple[int, bytes]], str | None,
                                     dict[tuple[int, int], str]]:
        exts: list[tuple[int, bytes]] = []
        fmt: str | None = None
        names: dict[tuple[int, int], str] = {}
        off = start
        while True:
            if off + 8 > min(end, len(buf)):
                break                       # no end marker before the area ends: tolerate
            etype, elen = struct.unpack_from(">II", buf, off)
            if etype == EXT_END:
                break
            data_end = off + 8 + elen
            if data_end > end or data_end > len(buf):
                raise ImageError(f"{path}: header extension {etype:#x} of {elen} bytes "
                                 "overruns the header cluster")
            data = bytes(buf[off + 8:data_end])
            if etype == EXT_BACKING_FORMAT:
                fmt = data.decode("ascii", "replace").rstrip("\0")
            elif etype == EXT_FEATURE_TABLE:
                for i in range(0, len(data) - 47, 48):
                    kind, bit = data[i], data[i + 1]
                    names[(kind, bit)] = data[i + 2:i + 48].split(b"\0")[0].decode(
                        "ascii", "replace")
            else:
                exts.append((etype, data))
            off = data_end + (-elen % 8)
        return exts, fmt, names

    # -- writing ------------------------------------------------------------------------
    def pack(self) -> bytes:
        """The header cluster's bytes: header, extensions, end marker, backing name."""
        cs = self.cluster_size
        out = bytearray(_V2.pack(
            MAGIC, self.version, 0, 0, self.cluster_bits, self.size, self.crypt_method,
            self.l1_size, self.l1_table_offset, self.refcount_table_offset,
            self.refcount_table_clusters, self.nb_snapshots, self.snapshots_offset))
        if self.version >= 3:
            header_length = max(self.header_length, 112)
            out += _V3.pack(self.incompatible_features, self.compatible_features,
                            self.autoclear_features, self.refcount_order, header_length)
            out += bytes([self.compression_type]) + bytes(header_length - 105)
        exts: list[tuple[int, bytes]] = []
        if self.backing_format:
            exts.append((EXT_BACKING_FORMAT, self.backing_format.encode()))
        if self.version >= 3:
            table = b"".join(bytes([k, b]) + n.encode()[:46].ljust(46, b"\0")
                             for (k, b), n in sorted(KNOWN_FEATURES.items()))
            exts.append((EXT_FEATURE_TABLE, table))
        exts.extend(self.extensions)
        for etype, data in exts:
            out += struct.pack(">II", etype, len(data)) + data + bytes(-len(data) % 8)
        out += bytes(8)
        if self.backing_file:
            name = self.backing_file.encode()
            if len(name) > MAX_BACKING_NAME:
                raise ImageError(f"backing file name is longer than {MAX_BACKING_NAME} bytes")
            struct.pack_into(">QI", out, 8, len(out), len(name))
            out += name
        if len(out) > cs:
            raise ImageError(f"the header, its extensions and the backing file name "
                             f"do not fit in one cluster ({cs} bytes)")
        return bytes(out)
