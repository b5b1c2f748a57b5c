"""The state directory's consistency check (``kvmkit virsh check``).

First it recovers, as a journalling file system replays its log at mount:
operations whose manager died are finished or undone (see :mod:`journal`),
temporaries of dead writers removed, run directories of ended transient
domains forgotten.  That is the crash protocol working, not a problem; it
is reported as what was recovered.  Then it verifies what must hold:
every definition parses and is stored under its own name; names and UUIDs
are unique; every disk exists; every managed save belongs to a defined
domain; every live VMM belongs to a known domain; the next domain id is
above every id in use.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from kvmkit.manager import files, journal, vmstate
from kvmkit.manager.domain_parse import parse_domain
from kvmkit.manager.rundir import RunDir

_TMP_PID = re.compile(re.escape(files.TMP_MARK) + r"(\d+)")


def _writer_alive(name: str) -> bool:
    m = _TMP_PID.search(name)
    return bool(m) and os.path.exists(f"/proc/{m.group(1)}") and int(m.group(1)) != os.getpid()


def _temporaries(folders: list[Path]) -> list[Path]:
    out = []
    for folder in folders:
        if folder.is_dir():
            out += [Path(e.path) for e in os.scandir(folder) if files.is_temporary(e.name) and not _writer_alive(e.name)]
    return out


def _migration_in_progress(name: str) -> bool:
    pid = name.rpartition(".migrating-")[2]
    return ".migrating-" in name and pid.isdigit() and os.path.exists(f"/proc/{pid}")


@dataclass(frozen=True)
class Report:
    problems: list[str]           # empty: consistent
    recovered: list[str]          # what the recovery step did


def check(host) -> Report:
    sd = host.sd
    recovered = journal.recover(sd)
    problems: list[str] = []
    folders = [sd.sub(s) for s in ("domains", "pools", "journal", "autostart", "save")] + \
        [Path(e.path) for sub in ("run", "snapshots") for e in os.scandir(sd.sub(sub)) if e.is_dir()]
    uuids: dict[str, str] = {}
    disks: set[Path] = set()
    for name in host.store.names():
        try:
            d = parse_domain(sd.definition(name).read_text(), str(sd.definition(name)))
        except Exception as e:
            problems.append(f"domain definition {sd.definition(name)} does not parse: {e}")
            continue
        if d.name != name:
            problems.append(f"{sd.definition(name)} defines '{d.name}', not '{name}'")
        if d.uuid in uuids:
            problems.append(f"domains '{uuids[d.uuid]}' and '{name}' share the uuid {d.uuid}")
        uuids[d.uuid] = name
        for x in d.disks:
            disks.add(Path(x.source).parent)
            if not os.path.exists(x.source):
                problems.append(f"domain '{name}': disk {x.target} ({x.source}) does not exist")
    for pool in host.storage.pools():
        disks.add(pool.target)
    for tmp in _temporaries(folders + sorted(disks)):
        if tmp.is_dir() and not tmp.is_symlink():
            vmstate.remove_tree(tmp)               # a saved state interrupted before its rename
        else:
            files.remove(tmp)
        recovered.append(f"removed {tmp} (a write interrupted by its writer's death)")
    for ident in journal.pending(sd):
        if not journal.in_progress(sd, ident):
            problems.append(f"interrupted operation {ident} could not be recovered: "
                            f"{files.read_json(sd.journal(ident))}")
    for e in os.scandir(sd.sub("save")):
        if files.is_temporary(e.name) or _migration_in_progress(e.name):
            continue
        if not host.store.exists(e.name):
            problems.append(f"saved state {e.path} belongs to no defined domain (an interrupted migration "
                            "leaves one: 'virsh restore' it, or remove it)")
    next_id = files.read_json(sd.next_id, 1)
    for e in os.scandir(sd.sub("run")):
        rd = RunDir(Path(e.path))
        if not rd.alive():
            if rd.exists() and not host.store.exists(e.name):
                rd.clear()                         # a transient domain that has ended
            continue
        status = rd.status()
        if not status.get("persistent") and host.store.exists(e.name) is False and not rd.live_xml.exists():
            problems.append(f"a VMM runs in {rd.path} for no known domain")
        if status.get("persistent") and not host.store.exists(e.name):
            problems.append(f"running domain '{e.name}' is marked persistent but has no definition")
        if isinstance(status.get("id"), int) and status["id"] >= next_id:
            problems.append(f"running domain '{e.name}' has id {status['id']}, not below next-id {next_id}")
    return Report(problems, recovered)
