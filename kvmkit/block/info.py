"""What ``img info`` reports, with qemu-img's JSON keys."""

from __future__ import annotations

import os
from typing import Any

from kvmkit.block.image import BlockImage
from kvmkit.block.qcow2 import header as hdr
from kvmkit.block.qcow2.image import Qcow2Image
from kvmkit.block.qcow2.snapshots import read_snapshots


def image_info(img: BlockImage) -> dict[str, Any]:
    out: dict[str, Any] = {
        "virtual-size": img.size,
        "filename": img.path,
        "format": img.format,
        "actual-size": img.actual_size(),
        "dirty-flag": False,
    }
    if isinstance(img, Qcow2Image):
        h = img.header
        out["cluster-size"] = img.cs
        out["dirty-flag"] = bool(h.incompatible_features & hdr.INCOMPAT_DIRTY)
        data: dict[str, Any] = {"compat": "1.1" if h.version >= 3 else "0.10"}
        if h.version >= 3:
            data.update({
                "compression-type": "zlib",
                "lazy-refcounts": bool(h.compatible_features & hdr.COMPAT_LAZY_REFCOUNTS),
                "refcount-bits": h.refcount_bits,
                "corrupt": bool(h.incompatible_features & hdr.INCOMPAT_CORRUPT),
                "extended-l2": False,
            })
        else:
            data["refcount-bits"] = 16
        out["format-specific"] = {"type": "qcow2", "data": data}
        snaps = read_snapshots(img)
        if snaps:
            out["snapshots"] = [{
                "icount": s.icount if s.icount is not None else 0,
                "vm-clock-nsec": s.vm_clock_nsec % 10**9,
                "name": s.name,
                "date-sec": s.date_sec,
                "date-nsec": s.date_nsec,
                "vm-clock-sec": s.vm_clock_nsec // 10**9,
                "id": s.id,
                "vm-state-size": s.vm_state_size,
            } for s in snaps]
        if h.backing_file:
            out["backing-filename"] = h.backing_file
            # qemu-img joins with the image's directory as given, without abspath
            out["full-backing-filename"] = os.path.join(os.path.dirname(img.path),
                                                        h.backing_file)
            if h.backing_format:
                out["backing-filename-format"] = h.backing_format
    return out
