"""``kvmkit.Host``: the manager's Python API, as libvirt-python's
``virConnect`` is for libvirt (the ``kvmkit virsh`` CLI is a thin layer
over it).

    host = kvmkit.Host("/var/lib/kvmkit")         # or Host() for the default
    host.define(open("vm.xml").read())
    host.start("vm")
    [(d.name, d.state) for d in host.domains()]

There is no daemon: every call reads the state directory and asks running
VMMs over QMP, so any number of processes (and threads) may use it at once,
and a VMM started by one process is seen and steered by every other.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from kvmkit.manager import files, lifecycle, vmstate
from kvmkit.manager.domain import DomainDef
from kvmkit.manager.domain_parse import parse_domain
from kvmkit.manager.domain_xml import domain_xml
from kvmkit.manager.errors import NoDomain, OperationInvalid
from kvmkit.manager.info import DomainInfo, live_info, shutoff_info
from kvmkit.manager.launch import console_socket
from kvmkit.manager.locks import locked
from kvmkit.manager.resources import ResourceCommands
from kvmkit.manager.rundir import RunDir
from kvmkit.manager.statedir import StateDir, default_state_dir
from kvmkit.manager.store import DefinitionStore
from kvmkit.manager.vmmlink import qmp_raw

class Host(ResourceCommands):
    """One state directory's domains, storage pools and snapshots (and the
    resource commands of :mod:`kvmkit.manager.resources`)."""

    def __init__(self, state_dir: str | os.PathLike | None = None) -> None:
        self.sd = StateDir.open(state_dir if state_dir is not None else default_state_dir())
        self.store = DefinitionStore(self.sd)

    @property
    def state_dir(self) -> Path:
        return self.sd.root

    # --- looking domains up -----------------------------------------------------------
    def _rd(self, name: str) -> RunDir:
        return self.store.run_dir(name)

    def _info(self, name: str) -> DomainInfo | None:
        persistent = self.store.exists(name)
        config = self.store.load(name) if persistent else None
        autostart = persistent and self.store.autostart(name)
        live = live_info(self._rd(name), persistent, autostart, config)
        if live is not None:
            return live
        if config is None:
            return None
        return dataclasses.replace(shutoff_info(self._rd(name), config, autostart),
                                   managed_save=self.sd.managed_save(name).is_dir())

    def _running_names(self) -> list[str]:
        run = self.sd.sub("run")
        return sorted(e.name for e in os.scandir(run) if e.is_dir() and RunDir(Path(e.path)).alive())

    def domains(self, active: bool = True, inactive: bool = True) -> list[DomainInfo]:
        """Domains in ``virsh list`` order: running ones by id, then the rest by name."""
        names = sorted(set(self.store.names()) | set(self._running_names()))
        infos = [i for i in (self._info(n) for n in names) if i is not None]
        infos = [i for i in infos if (active and i.active) or (inactive and not i.active)]
        return sorted(infos, key=lambda i: (0, i.id, "") if i.active else (1, 0, i.name.lower()))

    def lookup(self, key: str) -> DomainInfo:
        """By id, UUID or name (virsh's order)."""
        if key.isdigit():
            for info in self.domains(inactive=False):
                if info.id == int(key):
                    return info
        if len(key) == 36 and key.count("-") == 4:
            for info in self.domains():
                if info.uuid == key.lower():
                    return info
        info = self._info(key) if "/" not in key else None
        if info is None:
            raise NoDomain(f"no domain with matching name '{key}'")
        return info

    # --- definitions --------------------------------------------------------------------
    def define(self, xml: str, source: str = "(domain_definition)") -> DomainInfo:
        """Store a definition (new, or a new version of an existing one)."""
        d = parse_domain(xml, source)
        lifecycle.check_host_files(d)
        with locked(self.sd.domain_lock(d.name), f"domain '{d.name}'"):
            with self.store.host_lock():
                self.store.check_unique(d, self._transient_uuids())
                self.store.save(d)
            rd = self._rd(d.name)
            if rd.alive():
                rd.update_status(persistent=True)
        return self.lookup(d.name)

    def _transient_uuids(self) -> dict[str, str]:
        out = {}
        for name in self._running_names():
            if not self.store.exists(name):
                info = self._info(name)
                if info is not None:
                    out[name] = info.uuid
        return out

    def undefine(self, name: str, snapshots_metadata: bool = False, managed_save: bool = False) -> None:
        from kvmkit.manager import snapshots
        info = self.lookup(name)
        if info.managed_save and not managed_save:
            raise OperationInvalid("Refusing to undefine while domain managed save image exists")
        with locked(self.sd.domain_lock(info.name), f"domain '{info.name}'"):
            if self._rd(info.name).alive():
                raise OperationInvalid("cannot undefine a running domain: destroy or shut it down first "
                                       "(libvirt would make it transient; kvmkit keeps the definition)")
            if not self.store.exists(info.name):
                raise OperationInvalid("cannot undefine transient domain")
            count = len(snapshots.names(self.sd, info.name))
            if count and not snapshots_metadata:
                raise OperationInvalid(f"cannot delete inactive domain with {count} snapshots")
            with self.store.host_lock():
                snapshots.forget_all(self.sd, info.name)
                vmstate.remove_tree(self.sd.managed_save(info.name))
                self.store.remove(info.name)

    def dumpxml(self, name: str, inactive: bool = False) -> str:
        info = self.lookup(name)
        if inactive or not info.active:
            if not info.persistent:
                return self._rd(info.name).live_xml.read_text()
            return domain_xml(self.store.load(info.name))
        return self._rd(info.name).live_xml.read_text()

    def set_autostart(self, name: str, on: bool = True) -> None:
        info = self.lookup(name)
        if not info.persistent:
            raise OperationInvalid("cannot set autostart for transient domain")
        self.store.set_autostart(info.name, on)

    # --- life cycle ---------------------------------------------------------------------
    def start(self, name: str, force_boot: bool = False, paused: bool = False) -> DomainInfo:
        """Start a defined domain; one with a managed save continues from it
        (and the save is then gone), as libvirt's, unless ``force_boot``."""
        info = self.lookup(name)
        with locked(self.sd.domain_lock(info.name), f"domain '{info.name}'"):
            if self._rd(info.name).alive():
                raise OperationInvalid("domain is already running")
            managed = self.sd.managed_save(info.name)
            if managed.is_dir() and not force_boot:
                state = vmstate.open_state(managed)
                lifecycle.start(self.sd, self.store.load(info.name), persistent=True,
                                restore=dataclasses.replace(state, paused=state.paused or paused),
                                reason="restored")
                vmstate.remove_tree(managed)      # the running VMM keeps its mapping of the memory
            else:
                vmstate.remove_tree(managed)
                lifecycle.start(self.sd, self.store.load(info.name), persistent=True, paused=paused)
        return self.lookup(info.name)

    def create(self, xml: str, source: str = "(domain_definition)") -> DomainInfo:
        """Start a transient domain (gone when it stops), as ``virsh create``."""
        d = parse_domain(xml, source)
        lifecycle.check_host_files(d)
        with locked(self.sd.domain_lock(d.name), f"domain '{d.name}'"):
            if self._rd(d.name).alive():
                raise OperationInvalid(f"domain '{d.name}' is already running")
            with self.store.host_lock():
                self.store.check_unique(d, self._transient_uuids())
            lifecycle.start(self.sd, d, persistent=self.store.exists(d.name))
        return self.lookup(d.name)

    def autostart_all(self) -> list[str]:
        """Start every autostart domain that is shut off (what libvirtd does
        when it starts; run it from the host's boot)."""
        started = []
        for info in self.domains(active=False):
            if info.autostart:
                self.start(info.name)
                started.append(info.name)
        return started

    def _running(self, name: str) -> tuple[DomainInfo, RunDir]:
        info = self.lookup(name)
        rd = self._rd(info.name)
        lifecycle.require_running(rd)
        return info, rd

    def destroy(self, name: str) -> None:
        info = self.lookup(name)
        with locked(self.sd.domain_lock(info.name), f"domain '{info.name}'"):
            lifecycle.destroy(self._rd(info.name))

    def shutdown(self, name: str) -> None:
        """Press the ACPI power button (QMP system_powerdown); returns at once."""
        _, rd = self._running(name)
        lifecycle.monitor_command(rd, "system_powerdown", stopping="shutdown")

    def reboot(self, name: str) -> None:
        _, rd = self._running(name)
        lifecycle.reboot(rd)

    def reset(self, name: str) -> None:
        _, rd = self._running(name)
        lifecycle.monitor_command(rd, "system_reset")

    def suspend(self, name: str) -> None:
        _, rd = self._running(name)
        lifecycle.monitor_command(rd, "stop", pause_reason="user")

    def resume(self, name: str) -> None:
        info, rd = self._running(name)
        if info.state != "paused":
            raise OperationInvalid("domain is not paused")
        lifecycle.monitor_command(rd, "cont", reason="unpaused")

    def setmem(self, name: str, size: int, live: bool | None = None, config: bool | None = None) -> None:
        """Balloon a running domain to ``size`` bytes (``live``) and/or store
        it as currentMemory (``config``); by default whichever applies now."""
        info = self.lookup(name)
        if live is None and config is None:
            live, config = info.active, not info.active
        d = info.definition
        if size > d.memory:
            raise OperationInvalid("cannot set memory higher than max memory")
        if live:
            rd = self._rd(info.name)
            if not d.balloon:
                raise OperationInvalid("Unable to change memory of active domain without the balloon device")
            lifecycle.monitor_command(rd, "balloon", {"value": size})
            files.atomic_write(rd.live_xml, domain_xml(d.replace(current_memory=size), domain_id=info.id))
        if config:
            with locked(self.sd.domain_lock(info.name), f"domain '{info.name}'"), self.store.host_lock():
                self.store.save(self.store.load(info.name).replace(current_memory=size))

    def balloon_actual(self, name: str) -> int | None:
        """Guest RAM after the balloon, in bytes (None without a balloon)."""
        _, rd = self._running(name)
        try:
            return int(lifecycle.monitor_command(rd, "query-balloon")["actual"])
        except Exception:
            return None

    def qemu_monitor_command(self, name: str, message: dict[str, Any]) -> dict[str, Any]:
        """QMP passthrough (libvirt's ``qemu-monitor-command``): the whole reply."""
        _, rd = self._running(name)
        return qmp_raw(rd.qmp_socket, message)

    def console(self, name: str) -> tuple[Path, Path]:
        """(socket, lock) for attaching to the serial console of a running domain."""
        info, rd = self._running(name)
        sock = console_socket(info.definition, rd)
        if sock is None:
            raise OperationInvalid(f"domain '{info.name}' has no console socket "
                                   "(its serial port is a file, or it has none)")
        return sock, rd.console_lock

    # --- networks (kvmkit.manager.networks) ------------------------------------------------
    @property
    def networks(self):
        """Virtual networks: ``host.networks.define(xml)``, ``.start(name)``, ``.leases(name)``..."""
        from kvmkit.manager.networks import Networks
        return Networks(self.sd)

    def domifaddr(self, name: str) -> list[tuple[str, str, str]]:
        """(interface, MAC, address/prefix) of a running domain's NICs on
        kvmkit networks, from their networks' DHCP leases (libvirt's
        ``domifaddr --source lease``)."""
        info, _ = self._running(name)
        nets = self.networks
        out = []
        for nic in info.definition.interfaces:
            if nic.type != "network" or not nic.source:
                continue
            try:
                n = nets.load(nic.source)
                leases = nets.leases(nic.source)
            except Exception:                     # undefined since: no addresses to show
                continue
            prefix = n.address.network.prefixlen if n.address else 32
            out += [(nic.target or "-", nic.mac, f"{lease.ip}/{prefix}") for lease in leases if lease.mac == nic.mac]
        return out

    # --- storage, clones, snapshots (their own modules) ---------------------------------
    @property
    def storage(self):
        from kvmkit.manager.storage import Storage
        return Storage(self.sd)

    def pools(self):
        return self.storage.pools()

    def volumes(self, pool: str):
        return self.storage.volumes(pool)

    def clone(self, original: str, new_name: str, full: bool = False) -> DomainInfo:
        from kvmkit.manager.clone import clone
        clone(self, self.lookup(original).name, new_name, full)
        return self.lookup(new_name)

    def snapshot_create(self, name: str, snapshot: str, description: str | None = None) -> None:
        from kvmkit.manager import snapshots
        snapshots.create(self, self.lookup(name).name, snapshot, description)

    def snapshots(self, name: str):
        from kvmkit.manager import snapshots
        return snapshots.listing(self.sd, self.lookup(name).name)

    def snapshot_revert(self, name: str, snapshot: str) -> None:
        from kvmkit.manager import snapshots
        snapshots.revert(self, self.lookup(name).name, snapshot)

    def snapshot_delete(self, name: str, snapshot: str) -> None:
        from kvmkit.manager import snapshots
        snapshots.delete(self, self.lookup(name).name, snapshot)

    # --- VM state: save, restore, managed save, migration ---------------------------------
    def save(self, name: str, path: str | os.PathLike) -> None:
        """``virsh save``: the domain stops and its whole state goes to the
        new directory ``path`` (see :mod:`kvmkit.manager.vmstate`); ``restore``
        runs it again on the same disks."""
        info = self.lookup(name)
        with locked(self.sd.domain_lock(info.name), f"domain '{info.name}'"):
            self._save_and_quit(info.name, Path(path), "save")

    def _save_and_quit(self, name: str, path: Path, why: str) -> None:
        lifecycle.require_running(self._rd(name))
        vmstate.save_and_quit(self.sd, name, path, why)

    def restore(self, path: str | os.PathLike, paused: bool = False, running: bool = False) -> DomainInfo:
        """``virsh restore``: start the domain saved in ``path`` where it
        was; the file stays (it can be restored again while its disks still
        match it).  A defined domain of that name stays persistent."""
        state = vmstate.open_state(Path(path))
        with locked(self.sd.domain_lock(state.name), f"domain '{state.name}'"):
            if self._rd(state.name).alive():
                raise OperationInvalid(f"domain '{state.name}' is already active")
            persistent = self.store.exists(state.name)
            if persistent and self.store.load(state.name).uuid != state.uuid:
                raise OperationInvalid(f"domain '{state.name}' is already defined with another uuid")
            with self.store.host_lock():
                others = {n: u for n, u in self._transient_uuids().items() if n != state.name}
                if not persistent:
                    self.store.check_unique(state.live, others)
            want_paused = (state.paused or paused) and not running
            d = self.store.load(state.name) if persistent else state.live
            lifecycle.start(self.sd, d, persistent, restore=dataclasses.replace(state, paused=want_paused),
                            reason="restored")
        return self.lookup(state.name)

    def managedsave(self, name: str) -> None:
        """Save to the state directory and stop; the next ``start`` continues."""
        info = self.lookup(name)
        if not info.persistent:
            raise OperationInvalid("cannot do managed save for transient domain")
        with locked(self.sd.domain_lock(info.name), f"domain '{info.name}'"):
            managed = self.sd.managed_save(info.name)
            vmstate.remove_tree(managed)
            self._save_and_quit(info.name, managed, "save")

    def managedsave_remove(self, name: str) -> bool:
        """Forget a managed save (the next start boots); False if there was none."""
        info = self.lookup(name)
        with locked(self.sd.domain_lock(info.name), f"domain '{info.name}'"):
            managed = self.sd.managed_save(info.name)
            if not managed.is_dir():
                return False
            vmstate.remove_tree(managed)
            return True

    def migrate(self, name: str, uri: str, persistent: bool = False, undefine_source: bool = False) -> DomainInfo:
        """``virsh migrate NAME URI``: move a running domain to another kvmkit
        state directory (see :mod:`kvmkit.manager.migrate`); returns its info there."""
        from kvmkit.manager.migrate import migrate
        return migrate(self, self.lookup(name).name, uri, persistent, undefine_source)

    # --- upkeep -------------------------------------------------------------------------
    def check(self):
        """Recover what dead managers left half-done, then verify the state
        directory (:class:`kvmkit.manager.check.Report`; no problems: consistent)."""
        from kvmkit.manager.check import check
        return check(self)


__all__ = ["DomainDef", "DomainInfo", "Host"]
