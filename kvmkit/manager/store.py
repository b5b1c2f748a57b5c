"""Persistent domain definitions: ``domains/NAME.xml``, one file each.

Names and UUIDs are unique across defined *and* running domains; that check
and the write happen under the host lock, so two concurrent defines of the
same name cannot both succeed.  Every change is one atomic rename: a
definition is there or it is not.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kvmkit.manager import files
from kvmkit.manager.domain import DomainDef
from kvmkit.manager.domain_parse import parse_domain
from kvmkit.manager.domain_xml import domain_xml
from kvmkit.manager.errors import NoDomain, OperationFailed
from kvmkit.manager.locks import locked
from kvmkit.manager.rundir import RunDir
from kvmkit.manager.statedir import StateDir


@dataclass(frozen=True)
class DefinitionStore:
    sd: StateDir

    def names(self) -> list[str]:
        """Defined domain names (never a half-written temporary)."""
        out = []
        for entry in os.scandir(self.sd.sub("domains")):
            if entry.name.endswith(".xml") and not files.is_temporary(entry.name):
                out.append(entry.name[:-4])
        return sorted(out)

    def exists(self, name: str) -> bool:
        return self.sd.definition(name).exists()

    def load(self, name: str) -> DomainDef:
        try:
            text = self.sd.definition(name).read_text()
        except FileNotFoundError:
            raise NoDomain(f"no domain with matching name '{name}'") from None
        return parse_domain(text, str(self.sd.definition(name)))

    def save(self, d: DomainDef) -> None:
        """Write ``d`` (caller holds the host lock and checked uniqueness)."""
        files.atomic_write(self.sd.definition(d.name), domain_xml(d))

    def remove(self, name: str) -> None:
        files.remove(self.sd.definition(name))
        files.remove(self.sd.autostart(name))

    def host_lock(self):
        return locked(self.sd.host_lock, "the host's domain names")

    def check_unique(self, d: DomainDef, running: dict[str, str]) -> None:
        """libvirt's rules: a name may be redefined only with its own UUID,
        and a UUID belongs to one name.  ``running`` maps names of running
        transient domains to their UUIDs (they count too)."""
        known = dict(running)
        for name in self.names():
            if name not in known:
                try:
                    known[name] = self.load(name).uuid
                except Exception:               # an unreadable file still owns its name
                    known[name] = ""
        if d.name in known and known[d.name] != d.uuid:
            raise OperationFailed(f"domain '{d.name}' already exists with uuid {known[d.name]}")
        for name, uuid in known.items():
            if uuid == d.uuid and name != d.name:
                raise OperationFailed(f"domain '{name}' is already defined with uuid {d.uuid}")

    # --- autostart ------------------------------------------------------------------
    def autostart(self, name: str) -> bool:
        return self.sd.autostart(name).exists()

    def set_autostart(self, name: str, on: bool) -> None:
        if on:
            files.atomic_write(self.sd.autostart(name), "")
        else:
            files.remove(self.sd.autostart(name))

    def run_dir(self, name: str) -> RunDir:
        return RunDir(self.sd.run_dir(name))
