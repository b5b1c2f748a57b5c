"""Storage pools of type ``dir`` and the volumes in them (``pool-*``/``vol-*``).

A pool is libvirt's pool XML in ``pools/NAME.xml`` plus an ``.active``
marker; its volumes are simply the image files in its target directory, as
libvirt's dir backend sees them (so files copied there by hand are volumes
too).  Image work goes through :mod:`images` (kvmkit.block).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from kvmkit.manager import files, images
from kvmkit.manager.domain import new_uuid
from kvmkit.manager.errors import NoPool, NoVolume, OperationFailed, OperationInvalid, StorageError, XmlError
from kvmkit.manager.locks import locked
from kvmkit.manager.statedir import StateDir
from kvmkit.manager.xmltree import element, parse, serialise

COPY_CHUNK = 1 << 20


@dataclass(frozen=True)
class Pool:
    name: str
    uuid: str
    target: Path
    active: bool

    def space(self) -> tuple[int, int, int]:
        """(capacity, allocation, available) of the filesystem holding it."""
        try:
            st = os.statvfs(self.target)
        except OSError:
            return 0, 0, 0
        cap, avail = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
        return cap, cap - st.f_bfree * st.f_frsize, avail


@dataclass(frozen=True)
class Volume:
    name: str
    path: Path
    pool: str
    format: str
    capacity: int
    allocation: int
    backing: str | None


def pool_xml(p: Pool) -> str:
    cap, alloc, avail = p.space() if p.active else (0, 0, 0)
    return serialise(element("pool", type="dir", children=[
        element("name", p.name), element("uuid", p.uuid),
        element("capacity", str(cap), unit="bytes"), element("allocation", str(alloc), unit="bytes"),
        element("available", str(avail), unit="bytes"), element("source"),
        element("target", children=[element("path", str(p.target))])]))


class Storage:
    def __init__(self, sd: StateDir) -> None:
        self.sd = sd

    # --- pools ----------------------------------------------------------------------
    def _lock(self):
        return locked(self.sd.host_lock, "the host's storage pools")

    def pool_names(self) -> list[str]:
        return sorted(e.name[:-4] for e in os.scandir(self.sd.sub("pools"))
                      if e.name.endswith(".xml") and not files.is_temporary(e.name))

    def pools(self) -> list[Pool]:
        return [self.pool(n) for n in self.pool_names()]

    def pool(self, name: str) -> Pool:
        try:
            root = parse(self.sd.pool(name).read_text(), str(self.sd.pool(name)))
        except FileNotFoundError:
            raise NoPool(f"no storage pool with matching name '{name}'") from None
        target = root.find("target")
        path = target.child_text("path") if target is not None else None
        return Pool(root.child_text("name") or name, root.child_text("uuid") or "", Path(path or "/"),
                    self.sd.pool_active(name).exists())

    def define_pool(self, name: str, kind: str, target: str) -> Pool:
        """``pool-define-as NAME dir --target DIR``."""
        if kind != "dir":
            raise StorageError(f"unsupported storage pool type '{kind}' (kvmkit has 'dir' pools)")
        if not target or not os.path.isabs(target):
            raise XmlError(f"the pool target '{target}' must be an absolute path")
        if "/" in name or not name:
            raise XmlError(f"invalid pool name '{name}'")
        with self._lock():
            if self.sd.pool(name).exists():
                raise OperationFailed(f"pool '{name}' already exists")
            for other in self.pools():
                if other.target == Path(target):
                    raise OperationFailed(f"Storage source conflict with pool: '{other.name}'")
            pool = Pool(name, new_uuid(), Path(target), False)
            files.atomic_write(self.sd.pool(name), pool_xml(pool))
        return pool

    def build_pool(self, name: str) -> None:
        pool = self.pool(name)
        try:
            pool.target.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create path '{pool.target}': {e.strerror}") from None

    def start_pool(self, name: str) -> None:
        pool = self.pool(name)
        if pool.active:
            raise OperationInvalid(f"storage pool '{name}' is already active")
        if not pool.target.is_dir():
            raise StorageError(f"cannot open directory '{pool.target}': No such file or directory")
        files.atomic_write(self.sd.pool_active(name), "")

    def destroy_pool(self, name: str) -> None:
        self._active(name)
        files.remove(self.sd.pool_active(name))

    def undefine_pool(self, name: str) -> None:
        pool = self.pool(name)
        if pool.active:
            raise OperationInvalid(f"storage pool '{name}' is still active")
        with self._lock():
            files.remove(self.sd.pool(name))

    def _active(self, name: str) -> Pool:
        pool = self.pool(name)
        if not pool.active:
            raise OperationInvalid(f"storage pool '{name}' is not active")
        return pool

    # --- volumes ----------------------------------------------------------------------
    def volumes(self, pool_name: str) -> list[Volume]:
        pool = self._active(pool_name)
        out = []
        for e in sorted(os.scandir(pool.target), key=lambda e: e.name):
            if e.is_file() and not e.name.startswith(".") and not files.is_temporary(e.name):
                out.append(self._volume(pool, e.name))
        return out

    def _volume(self, pool: Pool, name: str) -> Volume:
        path = pool.target / name
        if "/" in name or not path.is_file():
            raise NoVolume(f"no storage vol with matching name '{name}'")
        i = images.info(path)
        return Volume(name, path, pool.name, i.format, i.capacity, i.allocation, i.backing)

    def volume(self, name: str, pool_name: str | None = None) -> Volume:
        """By name in ``pool_name``, or by path (or name) in any active pool."""
        if pool_name is not None:
            return self._volume(self._active(pool_name), name)
        for pool in self.pools():
            if not pool.active:
                continue
            if os.path.isabs(name) and Path(name).parent == pool.target:
                return self._volume(pool, Path(name).name)
        if os.path.isabs(name):
            raise NoVolume(f"no storage vol with matching path '{name}'")
        raise NoVolume(f"no storage vol with matching name '{name}'")

    def create_volume(self, pool_name: str, name: str, capacity: int | None, fmt: str = "raw",
                      backing: str | None = None, backing_fmt: str | None = None) -> Volume:
        pool = self._active(pool_name)
        if "/" in name:
            raise StorageError(f"volume name '{name}' cannot contain '/'")
        base = None
        if backing is not None:
            base = self.volume(backing, pool_name).path if not os.path.isabs(backing) else Path(backing)
            if not base.exists():
                raise StorageError(f"backing store '{backing}' does not exist")
        images.create(pool.target / name, fmt, capacity, base, backing_fmt)
        return self._volume(pool, name)

    def clone_volume(self, vol: Volume, new_name: str) -> Volume:
        pool = self._active(vol.pool)
        images.copy(vol.path, pool.target / new_name)
        return self._volume(pool, new_name)

    def resize_volume(self, vol: Volume, capacity: int, shrink: bool = False) -> None:
        images.resize(vol.path, capacity, shrink)

    def delete_volume(self, vol: Volume) -> None:
        files.remove(vol.path)

    def upload(self, vol: Volume, source: str, offset: int = 0, length: int | None = None) -> None:
        """Write ``source``'s bytes into the volume file at ``offset``, as
        libvirt's vol-upload does (the file, not the guest's view of it)."""
        try:
            with open(source, "rb") as src, open(vol.path, "r+b") as dst:
                dst.seek(offset)
                _copy(src, dst, length)
                if length is None and offset == 0:
                    dst.truncate()
                dst.flush()
                os.fsync(dst.fileno())
        except OSError as e:
            raise StorageError(f"cannot upload {source} to {vol.path}: {e.strerror}") from None
        images.info(vol.path)          # what was uploaded must be an image we can open

    def download(self, vol: Volume, target: str, offset: int = 0, length: int | None = None) -> None:
        try:
            with open(vol.path, "rb") as src, open(target, "wb") as dst:
                src.seek(offset)
                _copy(src, dst, length)
        except OSError as e:
            raise StorageError(f"cannot download {vol.path} to {target}: {e.strerror}") from None


def _copy(src, dst, length: int | None) -> None:
    if length is None:
        shutil.copyfileobj(src, dst, COPY_CHUNK)
        return
    left = length
    while left > 0:
        chunk = src.read(min(COPY_CHUNK, left))
        if not chunk:
            break
        dst.write(chunk)
        left -= len(chunk)
