"""virtio-blk (virtio 1.2 §5.2) over a :mod:`kvmkit.block` image.

Requests run on the device's I/O thread; reads and writes go straight
between the image and guest RAM with ``preadv``/``pwritev`` on the chain's
memoryviews.  A request the image cannot serve (out of range, read-only,
unaligned, an I/O error) completes with VIRTIO_BLK_S_IOERR; a chain with the
wrong shape also fails just that request.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
from typing import Any, Callable

from kvmkit.devices.virtio import iov
from kvmkit.devices.virtio.constants import DeviceId, bit
from kvmkit.devices.virtio.device import VirtioDevice
from kvmkit.devices.virtio.queue import Chain, Virtqueue
from kvmkit.errors import ConfigError, KvmkitError
from kvmkit.memory.guest_memory import GuestMemory

log = logging.getLogger(__name__)

F_SEG_MAX, F_RO, F_BLK_SIZE, F_FLUSH, F_CONFIG_WCE = 2, 5, 6, 9, 11
F_DISCARD, F_WRITE_ZEROES = 13, 14

T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
SECTOR = 512
QUEUE_SIZE = 256
SEG_MAX = QUEUE_SIZE - 2
MAX_DISCARD_SECTORS = 1 << 22           # 2 GiB per segment
MAX_DISCARD_SEG = 32
ID_BYTES = 20
WRITEBACK_OFFSET = 32                   # virtio_blk_config.writeback: 1 = volatile cache, flushes needed

_HDR = struct.Struct("<IIQ")
_SEG = struct.Struct("<QII")


class BlockRequestError(Exception):
    """One request fails with IOERR (bad range, read-only...): the device lives on."""


def open_backend(path: str, fmt: str | None, readonly: bool, cache: str = "writeback") -> Any:
    """Open the image with kvmkit.block (raw and qcow2) in QEMU cache mode
    ``cache``.  A failure names the option it came from (``--disk path=X:
    ...``), as --net and --serial do: with several disks, the user must see
    which one."""
    from kvmkit.block.image import open_image
    try:
        return open_image(path, format=fmt, readonly=readonly, cache=cache)
    except KvmkitError as exc:
        raise ConfigError(f"--disk path={path}: {_without_path(str(exc), path)}") from None


def _without_path(message: str, path: str) -> str:
    """``message`` without a leading ``path:`` the option already names."""
    return message[len(path) + 2:] if message.startswith(f"{path}: ") else message


class VirtioBlock(VirtioDevice):
    device_id = DeviceId.BLOCK
    queue_sizes = (QUEUE_SIZE,)
    kind = "virtio-blk"

    def __init__(self, memory: GuestMemory, name: str, image: Any, *, readonly: bool = False,
                 discard: bool = True, serial: str = "", path: str = "", fmt: str = "",
                 werror: str = "enospc", rerror: str = "report",
                 on_error: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.image = image
        self.werror, self.rerror, self.on_error = werror, rerror, on_error
        self._stalled: list[Chain] = []       # requests a 'stop' action holds until retry()
        self.readonly = readonly or bool(getattr(image, "readonly", False))
        self.discard = discard and not self.readonly
        self.serial = (serial or name).encode()[:ID_BYTES]
        self.path, self.fmt = path, fmt
        self.stats = {"rd_bytes": 0, "wr_bytes": 0, "rd_operations": 0, "wr_operations": 0,
                      "flush_operations": 0, "discard_operations": 0, "failed_operations": 0}
        super().__init__(memory, name)

    @property
    def capacity(self) -> int:
        return self.image.size // SECTOR

    def device_features(self) -> int:
        f = bit(F_SEG_MAX) | bit(F_BLK_SIZE) | bit(F_FLUSH) | bit(F_CONFIG_WCE)
        if self.readonly:
            f |= bit(F_RO)
        else:
            f |= bit(F_WRITE_ZEROES)
            if self.discard:
                f |= bit(F_DISCARD)
        return f

    def config_bytes(self) -> bytes:
        return struct.pack(
            "<QII HBB I BBHI BxH IIII IB3x",
            self.capacity, 0, SEG_MAX,
            0, 0, 0,                        # geometry: unused by Linux for virtio
            SECTOR,
            0, 0, 1, 0,                     # topology
            0 if self.image.writethrough else 1, 1,   # writeback (cache mode), num_queues
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, 1,
            MAX_DISCARD_SECTORS, MAX_DISCARD_SEG, 1)

    def write_config(self, offset: int, size: int, value: int) -> None:
        """The one writable field: the guest turns the volatile cache on or off
        (Linux's /sys/block/vda/queue/write_cache), as QEMU lets it."""
        if offset == WRITEBACK_OFFSET and size == 1 and not self.readonly:
            self.image.writethrough = not value & 1

    # -- requests ------------------------------------------------------------
    def handle_chain(self, queue: Virtqueue, chain: Chain) -> int | None:
        if chain.readable_len < _HDR.size or chain.writable_len < 1:
            log.warning("%s: malformed request (%d out, %d in bytes)", self.name,
                        chain.readable_len, chain.writable_len)
            return self._finish(chain.writable, S_IOERR, 0) if chain.writable_len else 0
        if self._stalled:                  # behind a stopped request: keep the guest's order
            self._stalled.append(chain)
            return None
        rtype, _, sector = _HDR.unpack(iov.gather(chain.readable, _HDR.size))
        _, out = iov.split(chain.readable, _HDR.size)
        data_in, status = iov.split_tail(chain.writable, 1)
        try:
            written = self._execute(rtype, sector, out, data_in)
            st = S_OK
        except BlockRequestError as exc:
            log.debug("%s: %s", self.name, exc)
            written, st = 0, S_IOERR
        except _Unsupported:
            written, st = 0, S_UNSUPP
        except (OSError, KvmkitError) as exc:
            action = self._error_action(rtype, exc)
            log.warning("%s: I/O error (%s): %s", self.name, action, exc)
            if action == "stop":
                self._stalled.append(chain)
                return None
            written, st = 0, S_OK if action == "ignore" else S_IOERR
        return self._finish(status, st, written)

    def _error_action(self, rtype: int, exc: BaseException) -> str:
        """QEMU's werror/rerror: what this failure does, told to the VMM as a
        BLOCK_IO_ERROR event (which pauses the VM for 'stop')."""
        nospace = _errno(exc) == errno.ENOSPC
        write = rtype not in (T_IN, T_GET_ID)
        policy = self.werror if write else self.rerror
        action = ("stop" if nospace else "report") if policy == "enospc" else policy
        if self.on_error is not None:
            self.on_error({"device": self.name, "node-name": self.name,
                           "operation": "write" if write else "read", "action": action,
                           "nospace": nospace, "reason": _reason(exc)})
        return action

    def retry(self) -> None:
        """The VM continues ('cont'): run the stopped requests again, in order,
        on the I/O thread (one may stop the VM again)."""
        self.io.call_later(0, self._retry)

    def _retry(self) -> None:
        with self.lock:
            chains, self._stalled = self._stalled, []
            if not chains or not self.running:
                return
            q = self.queues[0]
            for chain in chains:
                written = self.handle_chain(q, chain)
                if written is not None:
                    q.push(chain.head, written)
            self.interrupt(q)
            if not self._stalled:
                self.process_queue(q)         # what the guest queued meanwhile

    def on_reset(self) -> None:
        self._stalled = []

    def device_state(self) -> dict[str, Any]:
        return {"stalled": len(self._stalled)}

    def load_device_state(self, state: dict[str, Any]) -> None:
        # Stopped requests were the last ones popped: give them back to the
        # ring so the restored device pops and runs them again.
        q = self.queues[0]
        q.last_avail = (q.last_avail - state.get("stalled", 0)) & 0xFFFF
        self._stalled = []

    def _finish(self, status: list[memoryview], st: int, written: int) -> int:
        status[-1][-1] = st
        if st != S_OK:
            self.stats["failed_operations"] += 1
        return written + 1

    def _range(self, sector: int, nbytes: int) -> int:
        if nbytes % SECTOR:
            raise BlockRequestError(f"length {nbytes} is not a multiple of {SECTOR}")
        offset = sector * SECTOR
        if sector >= 1 << 55 or offset + nbytes > self.image.size:
            raise BlockRequestError(f"sector {sector}+{nbytes // SECTOR} past the end "
                                    f"({self.capacity} sectors)")
        return offset

    def _writable(self) -> None:
        if self.readonly:
            raise BlockRequestError("write to a read-only disk")

    def _execute(self, rtype: int, sector: int, out: list[memoryview],
                 data_in: list[memoryview]) -> int:
        if rtype in (T_IN, T_OUT):
            write = rtype == T_OUT
            if write:
                self._writable()
            bufs = out if write else data_in
            n = iov.total(bufs)
            offset = self._range(sector, n)
            if n:
                (self.image.pwritev if write else self.image.preadv)(offset, bufs)
            kind = "wr" if write else "rd"
            self.stats[f"{kind}_bytes"] += n
            self.stats[f"{kind}_operations"] += 1
            return 0 if write else n
        if rtype == T_FLUSH:
            self.image.flush()
            self.stats["flush_operations"] += 1
            return 0
        if rtype == T_GET_ID:
            return iov.scatter(data_in, self.serial.ljust(ID_BYTES, b"\0")[:iov.total(data_in)])
        if rtype in (T_DISCARD, T_WRITE_ZEROES):
            self._writable()
            if rtype == T_DISCARD and not self.discard:
                raise _Unsupported()
            self._segments(rtype, iov.gather(out, iov.total(out)))
            return 0
        raise _Unsupported()

    def _segments(self, rtype: int, raw: bytes) -> None:
        if len(raw) % _SEG.size or not raw or len(raw) // _SEG.size > MAX_DISCARD_SEG:
            raise BlockRequestError(f"{len(raw)} bytes of discard segments")
        for sector, count, flags in _SEG.iter_unpack(raw):
            if count > MAX_DISCARD_SECTORS or flags & ~1 or (rtype == T_DISCARD and flags):
                raise BlockRequestError(f"bad discard segment {sector}+{count} flags {flags:#x}")
            offset = self._range(sector, count * SECTOR)
            if rtype == T_DISCARD:
                self.image.discard(offset, count * SECTOR)
                self.stats["discard_operations"] += 1
            else:
                self.image.write_zeroes(offset, count * SECTOR)
                self.stats["wr_operations"] += 1

    # -- lifecycle ---------------------------------------------------------
    def close_backend(self) -> None:
        try:
            self.image.flush()
        except (OSError, KvmkitError) as exc:
            log.warning("%s: final flush failed: %s", self.name, exc)
        self.image.close()

    def query(self) -> dict[str, Any]:
        info = super().query()
        info.update({"device": self.name, "locked": False, "removable": False,
                     "inserted": {"file": self.path, "ro": self.readonly, "drv": self.fmt,
                                  "cache": {"writeback": not self.image.writethrough,
                                            "direct": self.image.direct is not None,
                                            "no-flush": bool(self.image.unsafe)},
                                  "image": {"filename": self.path, "format": self.fmt,
                                            "virtual-size": self.image.size}},
                     "stats": dict(self.stats)})
        return info


class _Unsupported(Exception):
    pass


def _errno(exc: BaseException) -> int | None:
    """The errno of an OSError, or of the OSError an ImageError was raised from."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno:
            return exc.errno
        exc = exc.__cause__ or exc.__context__
    return None


def _reason(exc: BaseException) -> str:
    code = _errno(exc)
    return os.strerror(code) if code else str(exc)
