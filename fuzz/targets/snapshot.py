"""A VM snapshot directory (``kvmkit run --restore DIR``) is untrusted: the
state file's header, its JSON body (checksummed, so the input is given a
correct checksum and the fuzzer reaches the body), the config record and
the memory layout it describes."""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import tempfile

import atheris

from kvmkit.errors import KvmkitError
from kvmkit.vmm import snapshot as snap

from fuzz.harness import target

_DIR = tempfile.mkdtemp(prefix=f"kvmkit-fuzz-s{os.getpid()}-")
atexit.register(shutil.rmtree, _DIR, True)     # the scratch files go with the process
atexit.register(shutil.rmtree, _DIR, True)


def _seed_body() -> bytes:
    body = {"memory-file-size": 4096, "memory-regions": [{"gpa": 0, "size": 4096, "offset": 0}],
            "host-compat": "off", "config": {"kernel": "/nonexistent", "memory": 64 << 20, "cpus": 1}}
    return json.dumps(body).encode()


@target("vm-snapshot", (KvmkitError,), lambda: [b"\0" + _seed_body(), b"\x01" + _seed_body()])
def vm_snapshot(data: bytes) -> None:
    """Snapshot.open, its memory layout and its config, on the input's state file."""
    fdp = atheris.FuzzedDataProvider(data)
    mode = fdp.ConsumeIntInRange(0, 3)
    body = fdp.ConsumeBytes(fdp.remaining_bytes())
    if mode == 3:
        raw = body                                             # the whole file, header included
    else:
        header = {"magic": snap.MAGIC, "version": snap.STATE_VERSION, "length": len(body),
                  "sha256": hashlib.sha256(body).hexdigest()}
        raw = json.dumps(header).encode() + b"\n" + body
    with open(os.path.join(_DIR, snap.STATE_FILE), "wb") as f:
        f.write(raw)
    with open(os.path.join(_DIR, snap.MEMORY_FILE), "wb") as f:
        f.truncate(4096)
    s = snap.Snapshot.open(_DIR)
    s.memory_layout()
    s.config()
