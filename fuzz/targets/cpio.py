"""The initramfs builder's inputs (file names, modes, contents, device
numbers from the rootfs overlay and ``kvmkit.run``) must give an archive
the kernel unpacks to exactly those members, or a clear refusal."""

from __future__ import annotations

import io
import stat

import atheris

from kvmkit.guest import cpio

from fuzz.harness import target


def read_newc(raw: bytes) -> list[tuple[str, int, bytes, int, int]]:
    """(name, mode, data, major, minor) per member, as the kernel's unpacker reads them."""
    out, pos = [], 0
    while True:
        assert raw[pos:pos + 6] == b"070701", f"bad magic at {pos}"
        f = [int(raw[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i in range(13)]
        namesize, filesize = f[11], f[6]
        name = raw[pos + 110:pos + 110 + namesize]
        assert name.endswith(b"\0") and b"\0" not in name[:-1], name
        pos += 110 + namesize
        pos += -pos % 4
        data = raw[pos:pos + filesize]
        pos += filesize
        pos += -pos % 4
        if name[:-1] == b"TRAILER!!!":
            assert pos == len(raw)
            return out
        out.append((name[:-1].decode(), f[1], data, f[9], f[10]))


@target("cpio", (ValueError,), lambda: [b"", b"etc\0passwd\0root:x:0:0\n", bytes(range(64))])
def cpio_builder(data: bytes) -> None:
    """Members from the input; the archive read back must match them."""
    fdp = atheris.FuzzedDataProvider(data)
    entries = []
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        name = fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 20)) if fdp.ConsumeBool() \
            else fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 12))
        kind = fdp.ConsumeIntInRange(0, 4)
        if kind == 0:
            e = cpio.directory(name, fdp.ConsumeIntInRange(0, 0o7777))
        elif kind == 1:
            e = cpio.regular(name, fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)), fdp.ConsumeIntInRange(0, 0o7777))
        elif kind == 2:
            e = cpio.symlink(name, fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 16)))
        elif kind == 3:
            e = cpio.char_device(name, fdp.ConsumeIntInRange(0, 1 << 33), fdp.ConsumeIntInRange(0, 1 << 33))
        else:
            e = cpio.Entry(name, fdp.ConsumeIntInRange(0, 1 << 33), fdp.ConsumeBytes(8),
                           uid=fdp.ConsumeIntInRange(-1, 1 << 33), mtime=fdp.ConsumeIntInRange(-1, 1 << 33))
        entries.append(e)
    buf = io.BytesIO()
    cpio.write(buf, entries)
    got = read_newc(buf.getvalue())
    want = [(e.name.lstrip("/"), e.mode, e.data, e.rdev_major, e.rdev_minor) for e in entries]
    assert got == want, (got, want)
    for e in entries:
        assert stat.S_IFMT(e.mode) or True
