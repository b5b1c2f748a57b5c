"""The destination of a migration (``kvmkit run --incoming URI``): read a
stream and build the machine it describes.

The machine is built as soon as the CONFIG section arrives, so the RAM
that follows lands straight in guest memory while the source still runs;
the state is applied only once the STATE and END sections have been read
and checked.  Anything wrong -- a truncated or damaged stream, another
version, a shape that does not add up -- closes what was built, tells the
source (which then keeps running) and raises :class:`StreamError` naming it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvmkit.errors import GuestMemoryError
from kvmkit.vmm.migration import stream as st
from kvmkit.vmm.migration.stream import StreamError, StreamReader
from kvmkit.vmm.migration.transport import Incoming, parse_uri

if TYPE_CHECKING:
    from kvmkit.vmm.machine import Machine


@dataclass(frozen=True)
class Arrival:
    """What came in: the machine (built, state applied, not started) and
    whether the source was running (the destination then runs it)."""

    machine: "Machine"
    running: bool
    pages: int
    seconds: float


def check_shape(rec: dict[str, Any], where: str) -> None:
    """The CONFIG section must describe a machine this kvmkit builds the same way."""
    from kvmkit.arch.x86 import layout
    try:
        cfg = rec["config"]
        regions = [(r["gpa"], r["size"]) for r in rec["memory-regions"]]
        memory, cpus = int(cfg["memory"]), int(cfg["cpus"])
    except (KeyError, TypeError, ValueError) as exc:
        raise StreamError(f"{where}: the CONFIG section lacks {exc} (not a machine description)") from None
    if regions != layout.ram_layout(memory):
        raise StreamError(f"{where}: the stream's memory regions {regions} do not match a "
                          f"{memory >> 20} MiB machine (a stream for a different machine shape)")
    if rec.get("cpus", cpus) != cpus:
        raise StreamError(f"{where}: the stream has {rec['cpus']} vCPUs but describes a machine "
                          f"with {cpus} (a stream for a different machine shape)")


def receive(incoming: Incoming, **overrides: Any) -> Arrival:
    """Accept the source on ``incoming`` and build the machine from its stream.

    ``overrides`` replace config fields (``serial=``...), as for a restore;
    ``start_paused`` keeps it paused even if the source was running."""
    import dataclasses
    from kvmkit.vmm import hostcompat
    from kvmkit.vmm.machine import Machine
    from kvmkit.vmm.snapshot import SnapshotError, config_from_record
    where = str(incoming.uri)
    machine = None
    try:
        src = incoming.accept()
        t0 = time.monotonic()
        reader = StreamReader(src, where)
        rec = reader.decode(reader.expect(st.CONFIG))
        check_shape(rec, where)
        user_paused = bool(overrides.pop("start_paused", False))
        nets = overrides.pop("nets", None)          # taps a jail's supervisor opened for the stream's NICs
        config = config_from_record(rec["config"], rec["host-compat"], **overrides)
        if nets:
            config = dataclasses.replace(config, virtio=dataclasses.replace(config.virtio, nets=tuple(nets)))
        machine = Machine(config, compat=hostcompat.resolve(config.host_compat), incoming=True)
        mem = machine.memory
        pages = 0
        body: dict[str, Any] | None = None
        while True:
            kind, payload = reader.section()
            if kind == st.RAM:
                gpa, data = reader.ram(payload)
                if len(data) % st.PAGE or gpa % st.PAGE:
                    raise StreamError(f"{where}: a RAM section of {len(data)} bytes at {gpa:#x} is not whole pages")
                try:
                    mem.write(gpa, data)
                except GuestMemoryError:
                    raise StreamError(f"{where}: RAM at {gpa:#x}+{len(data):#x} is outside this machine's "
                                      "memory (a stream for a different machine shape)") from None
                pages += len(data) // st.PAGE
            elif kind == st.ZERO:
                gpa, n = reader.zero(payload)
                try:
                    mem.view(gpa, n * st.PAGE)[:] = bytes(n * st.PAGE)
                except GuestMemoryError:
                    raise StreamError(f"{where}: zero pages at {gpa:#x} are outside this machine's memory") from None
            elif kind == st.SYNC:
                incoming.ready()
            elif kind == st.STATE:
                body = reader.decode(payload)
            elif kind == st.END:
                end = reader.decode(payload)
                break
            else:
                raise StreamError(f"{where}: unexpected {st.NAMES[kind]} section in the middle of the stream")
        if body is None:
            raise StreamError(f"{where}: the stream ended without the device state")
        if end.get("pages") != pages:
            raise StreamError(f"{where}: {pages} pages arrived but the source sent {end.get('pages')}")
        try:
            machine._apply_snapshot(body)
        except SnapshotError as exc:
            raise StreamError(f"{where}: {exc}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise StreamError(f"{where}: the device state does not fit this machine ({exc})") from None
        machine.take_disk_locks()              # the source released them before END
        running = bool(end.get("running"))
        # Runs on start() only if the source ran (as QEMU's autostart after -incoming).
        machine.config = dataclasses.replace(machine.config, start_paused=user_paused or not running)
        incoming.answer(True)
        return Arrival(machine, running, pages, time.monotonic() - t0)
    except BaseException as exc:
        incoming.answer(False, str(exc).replace("\n", " "))
        if machine is not None:
            machine.close()
        raise
    finally:
        incoming.close()


def incoming_machine(uri: str, **overrides: Any) -> Arrival:
    """Listen on (or open) ``uri`` and receive one migration."""
    return receive(Incoming(parse_uri(uri)), **overrides)
