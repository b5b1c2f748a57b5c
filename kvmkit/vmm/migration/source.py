"""The outgoing side of a live migration (QMP ``migrate``), QEMU-style pre-copy.

Dirty logging goes on, then every non-zero page is sent while the guest
runs; each further pass sends what was dirtied meanwhile, until what is
left would take no longer than ``downtime-limit`` at the bandwidth just
measured (or :data:`MAX_PASSES` is reached).  Then the VM pauses, the last
dirty pages and the whole device state follow, and with a return path
(unix, tcp) the source waits for the destination to say it runs before
calling the migration completed and settling in ``postmigrate``.

Any fault -- the destination dies or refuses, the connection breaks, the
disk fills, a cancel -- ends the job as ``failed`` or ``cancelled`` with
an error naming why, and a source that was running runs again: it is never
left paused by surprise.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmkit.errors import ConfigError, GuestError, KvmkitError
from kvmkit.vmm.api import RunState
from kvmkit.vmm.migration import stream as st
from kvmkit.vmm.migration.transport import Outgoing, parse_uri

if TYPE_CHECKING:
    from kvmkit.vmm.machine import Machine

log = logging.getLogger("kvmkit.migration")

PAGE = st.PAGE
MAX_PASSES = 30             # a guest dirtying faster than the link stops converging: stop anyway
RUN_PAGES = 64              # pages per RAM section (256 KiB)
SCAN = 256 << 10            # first pass: zero detection granularity
_ZERO_BUF = ctypes.create_string_buffer(SCAN)
_ZERO_ADDR = ctypes.addressof(_ZERO_BUF)
_memcmp = ctypes.CDLL(None).memcmp
_memcmp.restype = ctypes.c_int
_memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
FINISHED = ("completed", "failed", "cancelled")


class Cancelled(Exception):
    pass


@dataclass
class Parameters:
    """QEMU's migration parameters that apply here, with QEMU's defaults."""

    downtime_limit: int = 300              # ms
    max_bandwidth: int = 128 << 20         # bytes/s

    def as_dict(self) -> dict[str, Any]:
        return {"downtime-limit": self.downtime_limit, "max-bandwidth": self.max_bandwidth}


class Job:
    """One migration's progress, as query-migrate reports it."""

    def __init__(self, uri: str, total: int) -> None:
        self.uri = uri
        self.status = "setup"
        self.error = ""
        self.start = time.monotonic()
        self.setup_time = 0.0
        self.end: float | None = None
        self.total = total
        self.transferred = 0                # stream bytes
        self.ram_sent = 0                   # RAM payload bytes
        self.remaining = total
        self.normal_pages = 0
        self.duplicate = 0
        self.passes = 0
        self.dirty_rate = 0.0               # pages/s
        self.bandwidth = 0.0                # bytes/s
        self.expected_downtime = 0.0        # ms
        self.downtime: float | None = None  # ms
        self._mark = 0                      # transferred at the start of the pass being measured

    def info(self) -> dict[str, Any]:
        now = self.end if self.end is not None else time.monotonic()
        out: dict[str, Any] = {"status": self.status, "total-time": int((now - self.start) * 1000),
                               "setup-time": int(self.setup_time * 1000)}
        if self.status != "setup":
            out["ram"] = {"transferred": self.transferred, "remaining": self.remaining, "total": self.total,
                          "duplicate": self.duplicate, "normal": self.normal_pages,
                          "normal-bytes": self.normal_pages * PAGE, "page-size": PAGE,
                          "dirty-pages-rate": int(self.dirty_rate), "dirty-sync-count": self.passes,
                          "mbps": round(self.bandwidth * 8 / 1e6, 3)}
        if self.status in ("active", "device", "cancelling"):
            out["expected-downtime"] = int(self.expected_downtime)
        if self.downtime is not None:
            out["downtime"] = int(self.downtime)
        if self.status == "failed":
            out["error-desc"] = self.error
        return out


class MigrationControl:
    """The machine's outgoing migration: at most one job at a time."""

    def __init__(self, machine: "Machine") -> None:
        self._m = machine
        self.parameters = Parameters()
        self.job: Job | None = None
        self._thread: threading.Thread | None = None
        self._out: Outgoing | None = None
        self._cancel = threading.Event()
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- API
    def start(self, uri: str) -> None:
        """Begin migrating to ``uri`` in the background (QMP ``migrate``)."""
        with self._lock:
            if self.job is not None and self.job.status not in FINISHED:
                raise GuestError("There's a migration process in progress")
            if self._m._done.is_set() or self._m.state in (RunState.SHUTDOWN, RunState.INTERNAL_ERROR):
                raise GuestError(f"the VM is {self._m.state.value}: nothing to migrate")
            if self._m.state == RunState.POSTMIGRATE:
                raise GuestError("the VM has already migrated away (cont runs it here again)")
            target = parse_uri(uri)
            self._cancel.clear()
            self.job = Job(uri, self._m.memory.total_size)
            self._thread = threading.Thread(target=self._run, args=(target,), name="migration", daemon=True)
            self._thread.start()

    def cancel(self) -> None:
        """QMP ``migrate_cancel``: stop a running job; the source keeps running."""
        job = self.job
        if job is None or job.status in FINISHED:
            return
        self._set_status(job, "cancelling")
        self._cancel.set()
        out = self._out
        if out is not None:
            out.abort()

    def set_parameters(self, downtime_limit: int | None = None, max_bandwidth: int | None = None) -> None:
        if downtime_limit is not None:
            if not 0 <= downtime_limit <= 2000000:
                raise ConfigError("Parameter 'downtime_limit' expects an integer in the range of 0 to 2000 seconds")
            self.parameters.downtime_limit = downtime_limit
        if max_bandwidth is not None:
            if max_bandwidth <= 0:
                raise ConfigError("Parameter 'max_bandwidth' expects a positive number of bytes per second")
            self.parameters.max_bandwidth = max_bandwidth

    def query(self) -> dict[str, Any]:
        return {} if self.job is None else self.job.info()

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Until the job ends (for the Python API and tests)."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.query()

    # ---------------------------------------------------------------- the job
    def _set_status(self, job: Job, status: str) -> None:
        job.status = status
        self._m._emit("MIGRATION", {"status": status})

    def _run(self, uri) -> None:
        job, m = self.job, self._m
        paused_here = locks_released = False
        dirty = None
        self._set_status(job, "setup")
        try:
            self._out = out = Outgoing(uri)
            if self._cancel.is_set():
                raise Cancelled()
            w = _Throttled(out, self, job)
            writer = st.StreamWriter(w.write)
            w.writer = writer
            writer.json(st.CONFIG, stream_config(m))
            dirty = m.dirty_tracker.open()
            job.setup_time = time.monotonic() - job.start
            self._set_status(job, "active")
            t = time.monotonic()
            self._first_pass(writer, job)
            pages = self._harvest(dirty)
            self._measure(job, t, len(pages))
            while pages and job.passes < MAX_PASSES:
                if job.expected_downtime <= self.parameters.downtime_limit:
                    break
                t = time.monotonic()
                self._send_pages(writer, job, pages)
                job.passes += 1
                m._emit("MIGRATION_PASS", {"pass": job.passes})
                pages = self._harvest(dirty)
                self._measure(job, t, len(pages))
            # ---- stop and copy, once the destination has built its machine
            # and caught up with what is in flight (no backlog in the downtime)
            writer.section(st.SYNC)
            out.wait_ready()
            running = m.state == RunState.RUNNING
            t_stop = time.monotonic()
            if running:
                m.pause()
                paused_here = True
            t_paused = time.monotonic()
            self._set_status(job, "device")
            w.unthrottled = True
            from kvmkit.vmm.snapshot import capture
            with m._quiesced_devices():
                pages |= dirty.take()
                self._send_pages(writer, job, pages)
                t_pages = time.monotonic()
                body = capture(m)
            writer.json(st.STATE, body)
            m.release_disk_locks()             # the destination takes them when the stream ends
            locks_released = True
            writer.json(st.END, {"running": running, "pages": job.normal_pages})
            t_state = time.monotonic()
            job.remaining = 0
            out.finish()
            job.downtime = (time.monotonic() - t_stop) * 1000
            log.info("stop and copy: pause %.1f ms, %d pages %.1f ms, state %.1f ms, destination %.1f ms",
                     (t_paused - t_stop) * 1e3, len(pages), (t_pages - t_paused) * 1e3,
                     (t_state - t_pages) * 1e3, (time.monotonic() - t_state) * 1e3)
            job.end = time.monotonic()
            dirty.close()
            dirty = None
            m._set_state(RunState.POSTMIGRATE)
            self._set_status(job, "completed")
        except BaseException as exc:  # noqa: BLE001 - every fault must leave the source as it was
            cancelled = self._cancel.is_set()
            why = None
            if self._out is not None:
                if isinstance(exc, OSError) and not cancelled:
                    why = self._out.refusal()
                self._out.abort()
            if dirty is not None:
                dirty.close()
            if locks_released:
                try:
                    m.take_disk_locks()
                except KvmkitError as lock_error:   # the destination may have started on them after all
                    log.warning("after the failed migration: %s; the source stays paused", lock_error)
                    paused_here = False
            if paused_here:
                m.resume()
            job.end = time.monotonic()
            job.error = ("migration cancelled" if cancelled else
                         f"the destination refused the stream: {why}" if why else _describe(exc, job.uri))
            if not cancelled:
                log.warning("migration to %s failed: %s", job.uri, job.error)
            self._set_status(job, "cancelled" if cancelled else "failed")
        finally:
            self._out = None

    def _harvest(self, dirty) -> set[int]:
        with self._m._quiesced_devices():      # no device is between marking a page and writing it
            return dirty.take()

    def _measure(self, job: Job, t0: float, npages: int) -> None:
        elapsed = max(time.monotonic() - t0, 1e-6)
        sent = job.transferred - job._mark
        job._mark = job.transferred
        job.bandwidth = max(sent / elapsed, 1.0)
        job.dirty_rate = npages / elapsed
        job.remaining = npages * PAGE
        job.expected_downtime = job.remaining / job.bandwidth * 1000

    def _first_pass(self, writer: st.StreamWriter, job: Job) -> None:
        """Every page that is not zero (the destination's RAM starts zeroed)."""
        scanned = 0
        for r in self._m.memory.regions:
            base = ctypes.addressof(ctypes.c_char.from_buffer(r.mapping))
            untouched = _untouched(base, r.size) if r.anonymous else None
            for off in range(0, r.size, SCAN):
                size = min(SCAN, r.size - off)
                n = size // PAGE
                if untouched is not None and untouched[off // SCAN]:
                    job.duplicate += n
                elif _memcmp(base + off, _ZERO_ADDR, size) == 0:   # no copy of untouched RAM
                    job.duplicate += n
                else:
                    chunk = r.mapping[off:off + size]
                    writer.ram(r.guest_phys_addr + off, chunk)
                    job.normal_pages += n
                    job.ram_sent += size
                scanned += size
                job.remaining = job.total - scanned

    def _send_pages(self, writer: st.StreamWriter, job: Job, pages: set[int]) -> None:
        mem = self._m.memory
        ordered = sorted(pages)
        i = 0
        while i < len(ordered):
            start = ordered[i]
            n = 1
            while i + n < len(ordered) and ordered[i + n] == start + n and n < RUN_PAGES:
                n += 1
            gpa = start * PAGE
            try:
                writer.ram(gpa, mem.view(gpa, n * PAGE))
            except Exception:
                for k in range(n):           # a run across a region edge: page by page
                    writer.ram(gpa + k * PAGE, mem.view(gpa + k * PAGE, PAGE))
            job.normal_pages += n
            job.ram_sent += n * PAGE
            i += n
            job.remaining = max(job.remaining - n * PAGE, 0)


def _untouched(addr: int, size: int) -> list[bool] | None:
    """Per SCAN chunk of anonymous RAM: True where no page was ever present
    or swapped (``/proc/self/pagemap`` entry 0), so the chunk is zero without
    reading it -- reading faults in every page, slow on a nested host.
    None if pagemap cannot be read."""
    per = SCAN // PAGE * 8
    try:
        with open("/proc/self/pagemap", "rb", buffering=0) as f:
            f.seek(addr // PAGE * 8)
            data = f.read(size // PAGE * 8)
    except OSError:
        return None
    if len(data) != size // PAGE * 8:
        return None
    zero = bytes(per)
    return [data[i:i + per] == zero for i in range(0, len(data), per)]


class _Throttled:
    """The stream's byte sink: honours max-bandwidth (not in the final,
    stopped phase, as QEMU does) and a cancel."""

    def __init__(self, out: Outgoing, ctl: MigrationControl, job: Job) -> None:
        self.out, self.ctl, self.job = out, ctl, job
        self.unthrottled = False
        self.writer: st.StreamWriter | None = None
        self._t0 = time.monotonic()
        self._sent = 0

    def write(self, data) -> None:
        if self.ctl._cancel.is_set():
            raise Cancelled()
        self.out.write(data)
        self.job.transferred += len(data)
        if self.unthrottled:
            return
        self._sent += len(data)
        bw = self.ctl.parameters.max_bandwidth
        ahead = self._sent / bw - (time.monotonic() - self._t0)
        if ahead > 0.005:
            self.ctl._cancel.wait(ahead)
        if time.monotonic() - self._t0 > 1.0:
            self._t0, self._sent = time.monotonic(), 0


def stream_config(m: "Machine") -> dict[str, Any]:
    """The CONFIG section: what the destination builds."""
    from kvmkit.vmm.snapshot import config_record, tap_names
    return {"config": config_record(m.config, tap_names(m)), "host-compat": "on" if m.compat.enabled else "off",
            "memory-regions": [{"gpa": r.guest_phys_addr, "size": r.size} for r in m.memory.regions],
            "cpus": len(m.vcpus)}


def _describe(exc: BaseException, uri: str) -> str:
    """One line a user can act on."""
    if isinstance(exc, (BrokenPipeError, ConnectionResetError)):
        return f"{uri}: the destination closed the connection (it died or refused the stream)"
    if isinstance(exc, OSError):
        import errno
        if exc.errno == errno.ENOSPC:
            return f"{uri}: no space left on the device (the partial stream was removed)"
        return f"{uri}: {exc.strerror or exc}"
    return str(exc) or type(exc).__name__
