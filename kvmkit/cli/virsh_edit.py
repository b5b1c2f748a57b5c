"""``virsh edit``: the inactive definition in ``$VISUAL``/``$EDITOR``; the
result is parsed and validated before anything is saved, and an invalid
edit can be retried (on a terminal) or is dropped, never half-applied."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile

from kvmkit.errors import KvmkitError
from kvmkit.manager.errors import OperationFailed


def edit_domain(host, name: str) -> str:
    original = host.dumpxml(name, inactive=True)
    fd, path = tempfile.mkstemp(prefix=f"virsh{name}", suffix=".xml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(original)
        while True:
            _run_editor(path)
            with open(path) as f:
                edited = f.read()
            if edited == original:
                return f"Domain '{name}' XML configuration not changed.\n"
            try:
                info = host.define(edited, path)
                return f"Domain '{info.name}' XML configuration edited.\n"
            except KvmkitError as e:
                print(f"error: {e}", file=sys.stderr)
                if not _again():
                    raise OperationFailed("the edited XML was not saved") from None
    finally:
        os.unlink(path)


def _run_editor(path: str) -> None:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        rc = subprocess.call(shlex.split(editor) + [path])
    except OSError as e:
        raise OperationFailed(f"cannot run the editor {editor!r}: {e.strerror}") from None
    if rc != 0:
        raise OperationFailed(f"the editor {editor!r} exited with status {rc}")


def _again() -> bool:
    """virsh's "Failed. Try again? [y,n]" on a terminal; no elsewhere."""
    if not sys.stdin.isatty():
        return False
    while True:
        sys.stdout.write("Failed. Try again? [y,n]: ")
        sys.stdout.flush()
        answer = sys.stdin.readline().strip().lower()
        if answer in ("y", "n"):
            return answer == "y"
