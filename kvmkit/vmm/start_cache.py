"""A cached snapshot of a guest at its shell prompt: boot once, restore ever after.

On hosts whose KVM emulates guest kernel code a boot takes many seconds
and a restore tens of milliseconds, so ``kvmkit run`` with the default
fast guest keeps one: the first run boots, waits for the shell prompt,
saves the VM (a pause of a fraction of a second) and goes on in the same
session; later runs restore it and the prompt is there at once.

Entries live in ``~/.cache/kvmkit/snapshots/<key hash>/`` (``$XDG_CACHE_HOME``
is honoured; ``$KVMKIT_START_CACHE`` names another directory).  The key (``key.json``) holds everything the saved state
depends on: SHA-256 of the kernel and the initramfs, memory size, vCPU
count, command line, ACPI, host-compat, kvmkit's state version, a hash of
kvmkit's source (an edited checkout does not restore what older code
wrote) and the
host (its kernel release and CPU flags, since CPUID and MSRs come from
it).  A change in any of them is a different key, so a stale entry is
never restored; it is simply not found.  Entries are written to a
temporary directory and renamed into place, so a crash never leaves half
an entry, and two first runs at once each boot and one entry wins.

The restored guest's clocks continue from the moment of the snapshot:
kvmclock and the TSC are loaded as saved, so monotonic time has no jump
and no timer, watchdog or RCU stall check in the guest sees one.  Its
wall clock is therefore behind the host's by the time the entry sat in
the cache (the restore note says by how much); ``hwclock -s`` in the guest
sets it from the RTC, which reads the host's time.  Why not advance the
clock instead (``KVM_SET_CLOCK`` with ``KVM_CLOCK_REALTIME`` can): Linux
turns a clocksource delta into nanoseconds with a 64-bit multiply sized
for about ten minutes between ticks, so a jump of hours would come out
as garbage, and every timer due in the gap would fire at once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from kvmkit.vmm.config import VmConfig
    from kvmkit.vmm.machine import Machine

log = logging.getLogger(__name__)

KEY_FILE = "key.json"
SCREEN_FILE = "screen"           # the console's last line at the save: the prompt, shown on restore
QUIET = 0.3                      # seconds of console silence after the prompt before saving
CURSOR_QUERY = rb"(?:\x1b\[6n)?"    # busybox ash asks the terminal where the cursor is
_HASHES: dict[tuple, str] = {}


def cache_root() -> Path:
    """``$KVMKIT_START_CACHE``, else ``${XDG_CACHE_HOME:-~/.cache}/kvmkit/snapshots``."""
    if os.environ.get("KVMKIT_START_CACHE"):
        return Path(os.environ["KVMKIT_START_CACHE"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "kvmkit" / "snapshots"


def _memoised(ident: tuple, compute: Callable[[], str]) -> str:
    """``compute()``, remembered per ``ident`` in this process and beside the
    cache (``hashes.json``) so a run does not re-read what has not changed."""
    if ident in _HASHES:
        return _HASHES[ident]
    memo = cache_root() / "hashes.json"
    key = "|".join(map(str, ident))
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = compute()
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            tmp = memo.with_name(f"hashes.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(known))
            tmp.rename(memo)
        except OSError:
            pass
    _HASHES[ident] = known[key]
    return known[key]


def _file_hash(path: Path) -> str:
    """SHA-256 of a file, remembered per (path, size, mtime)."""
    st = path.stat()

    def compute() -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    return _memoised((str(path.resolve()), st.st_size, st.st_mtime_ns), compute)


def _code_hash() -> str:
    """SHA-256 of kvmkit's own source: a saved state is only as good as the
    code that wrote it and the code that will load it, and a changed device
    model or host-compat layer with the same version number (a checkout,
    an edit) must not restore an entry it did not write."""
    import kvmkit
    root = Path(kvmkit.__file__).parent
    sources = sorted(root.rglob("*.py"))
    stats = hashlib.sha256(repr([(str(p.relative_to(root)), st.st_size, st.st_mtime_ns)
                                 for p in sources for st in (p.stat(),)]).encode()).hexdigest()

    def compute() -> str:
        h = hashlib.sha256()
        for p in sources:
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
        return h.hexdigest()
    return _memoised(("kvmkit-code", stats), compute)


def _host() -> dict[str, str]:
    flags = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"kernel": platform.release(), "cpu-flags": hashlib.sha256(flags.encode()).hexdigest()[:16]}


def cache_key(config: "VmConfig") -> dict[str, Any]:
    """Everything a saved state of ``config``'s guest depends on."""
    from kvmkit import __version__
    from kvmkit.vmm.snapshot import STATE_VERSION
    return {"kernel": _file_hash(Path(config.kernel)),
            "initrd": _file_hash(Path(config.initrd)) if config.initrd else None,
            "memory": config.memory, "cpus": config.cpus, "cmdline": config.cmdline,
            "acpi": config.acpi, "host-compat": config.host_compat,
            "state-version": STATE_VERSION, "kvmkit": __version__, "code": _code_hash(), "host": _host()}


def _digest(key: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


@dataclass(frozen=True)
class Entry:
    """One cached snapshot: where it is and the screen to show on restore."""

    path: Path
    screen: bytes


def lookup(config: "VmConfig", root: Path | None = None) -> Entry | None:
    """The cached snapshot for ``config``, if there is a complete one."""
    from kvmkit.vmm.snapshot import STATE_FILE
    key = cache_key(config)
    d = (root or cache_root()) / _digest(key)
    try:
        if json.loads((d / KEY_FILE).read_text()) != key or not (d / STATE_FILE).exists():
            return None
        return Entry(d, (d / SCREEN_FILE).read_bytes())
    except (OSError, ValueError):
        return None


def restore(entry: Entry, **overrides: Any) -> "Machine":
    """The cached guest (not started), with its prompt put back on the
    console so the user (and ``console.expect``) sees it again."""
    from kvmkit.vmm.machine import Machine
    m = Machine.restore(entry.path, **overrides)
    m.console.write(entry.screen)
    return m


def clock_lag(machine: "Machine") -> float:
    """Seconds the restored guest's wall clock is behind the host's."""
    saved = machine._restore_from.body.get("saved-at") if machine._restore_from is not None else None
    return max(0.0, time.time() - saved) if saved else 0.0


class PromptSaver:
    """Watches a booting machine's console and saves it into the cache the
    first time it sits at ``prompt``, if nothing has been typed yet (once
    anything is, the guest may hold input it has not echoed: no save).
    From the prompt until the save, input is held in the console (typed in
    right after), so a script that types the moment the prompt shows still
    gets its run saved."""

    def __init__(self, machine: "Machine", prompt: bytes, root: Path | None = None,
                 timeout: float = 1800.0) -> None:
        self.machine, self.prompt = machine, re.compile(re.escape(prompt) + CURSOR_QUERY + rb"\Z")
        self.root = root or cache_root()
        self.key = cache_key(machine.config)
        self.timeout = timeout
        self.saved: Path | None = None
        self.error: str | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kvmkit-start-cache", daemon=True)

    def start(self) -> "PromptSaver":
        self.machine.console.hold_input_at(self.prompt)   # input waits from the instant the prompt is printed
        self._thread.start()
        return self

    def _at_prompt(self) -> tuple[bytes, int] | None:
        """At the prompt, the console quiet for QUIET seconds and nothing
        ever typed: the console's output and input count then."""
        console = self.machine.console
        out, typed = console.output, console.typed
        if not self.prompt.search(out):
            return None
        time.sleep(QUIET)
        if console.output != out or console.typed != typed or not self.machine.running:
            return None
        return out, typed

    def _run(self) -> None:
        deadline = time.monotonic() + self.timeout
        console = self.machine.console
        try:
            while time.monotonic() < deadline and not self.machine._done.is_set():
                if console.typed:
                    return               # typed ahead: it may sit unechoed in the guest's tty
                if console.input_held:
                    if not self.prompt.search(console.output):
                        console.release_input()      # the guest moved on: a later prompt holds again
                        continue
                    seen = self._at_prompt()
                    if seen is not None and self._save(*seen):
                        return
                time.sleep(0.05)
        except Exception as exc:         # a failed cache must never stop the guest
            self.error = str(exc)
            log.warning("start cache: %s", exc)
        finally:
            console.hold_input_at(None)
            console.release_input()
            self.done.set()

    def _save(self, out: bytes, typed: int) -> bool:
        """Save if, with the guest paused, the console is still as it was
        at the prompt: input typed a moment ago (still in the UART or the
        guest's tty, not yet echoed) would otherwise be saved with it and
        replayed into every later run.  False if not saved (try again)."""
        machine, console = self.machine, self.machine.console
        if not machine.running:
            return False
        machine.pause()
        try:
            if console.output != out or console.typed != typed or machine.serial.save_state()["rx"]:
                return False
            self._write_entry(out.rsplit(b"\n", 1)[-1])
            return True
        finally:
            machine.resume()

    def _write_entry(self, screen: bytes) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / _digest(self.key)
        tmp = Path(tempfile.mkdtemp(prefix=".new-", dir=self.root))
        try:
            self.machine.save_snapshot(tmp)          # paused: stays paused
            (tmp / SCREEN_FILE).write_bytes(screen)
            (tmp / KEY_FILE).write_text(json.dumps(self.key, indent=1, sort_keys=True) + "\n")
            if final.exists():
                shutil.rmtree(final)     # a stale or concurrent entry of the same key
            tmp.rename(final)
            self.saved = final
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        _drop_superseded(self.root, self.key)


CODE_FIELDS = ("code", "kvmkit", "state-version")


def _drop_superseded(root: Path, key: dict[str, Any]) -> None:
    """Remove entries of the same guest written by other kvmkit code: they
    can never be restored by this code, and each holds the guest's memory."""
    same_guest = {k: v for k, v in key.items() if k not in CODE_FIELDS}
    for d in root.iterdir():
        if d.name == _digest(key) or not d.is_dir():
            continue
        try:
            other = json.loads((d / KEY_FILE).read_text())
        except (OSError, ValueError):
            continue
        if {k: v for k, v in other.items() if k not in CODE_FIELDS} == same_guest:
            shutil.rmtree(d, ignore_errors=True)
