"""Virtual networks on a host: definitions kept like domains' and the
bridge, firewall table and dnsmasq that make one active.

::

    STATE/networks/NAME.xml          persistent definitions (atomic writes)
    STATE/networks/autostart/NAME    marker: started by `host-autostart`
    STATE/networks/locks/NAME.lock   per-network lock (start, destroy, undefine)
    STATE/networks/run/NAME/         an active network: active.json (written last
                                     at start, first thing removed at destroy),
                                     dnsmasq.conf/.pid/.leases

Starting is all-or-nothing: each step (bridge, nftables table, dnsmasq)
registers its undo, and a failure anywhere runs them in reverse before the
error is raised, so no bridge, table or dnsmasq outlives a failed
``net-start``.  A network is active while ``active.json`` exists *and* its
bridge exists in this network namespace: after a host reboot (or seen from
another namespace) it is inactive, not half-alive.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from kvmkit.host import bridge as hbridge
from kvmkit.host import dnsmasq, nat
from kvmkit.host.errors import HostNetworkError
from kvmkit.manager import files
from kvmkit.manager.errors import NoNetwork, OperationFailed, OperationInvalid
from kvmkit.manager.locks import locked
from kvmkit.manager.network import NetworkDef
from kvmkit.manager.network_xml import network_xml, parse_network
from kvmkit.manager.statedir import StateDir


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    uuid: str
    bridge: str
    active: bool
    persistent: bool
    autostart: bool
    definition: NetworkDef


class Networks:
    """One state directory's networks (``host.networks``)."""

    def __init__(self, sd: StateDir) -> None:
        self.sd = sd
        self.root = sd.sub("networks")
        for sub in (self.root, self.root / "autostart", self.root / "locks", self.root / "run"):
            sub.mkdir(parents=True, exist_ok=True)

    # --- where things are -------------------------------------------------------------
    def _def_path(self, name: str) -> Path:
        return self.root / f"{name}.xml"

    def _run(self, name: str) -> Path:
        return self.root / "run" / name

    def _active_file(self, name: str) -> Path:
        return self._run(name) / "active.json"

    def _lock(self, name: str):
        return locked(self.root / "locks" / f"{name}.lock", f"network '{name}'")

    def _names_lock(self):
        return locked(self.sd.host_lock, "the host's network names")

    def dnsmasq_files(self, name: str) -> dnsmasq.Files:
        return dnsmasq.Files(self._run(name))

    # --- definitions ------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(e.name[:-4] for e in os.scandir(self.root)
                      if e.name.endswith(".xml") and not files.is_temporary(e.name))

    def load(self, name: str) -> NetworkDef:
        try:
            text = self._def_path(name).read_text()
        except (FileNotFoundError, NotADirectoryError):
            raise NoNetwork(f"no network with matching name '{name}'") from None
        return parse_network(text, str(self._def_path(name)))

    def _all(self) -> list[NetworkDef]:
        out = []
        for n in self.names():
            with contextlib.suppress(Exception):
                out.append(self.load(n))
        return out

    def define(self, xml: str, source: str = "(network_definition)") -> NetworkInfo:
        """Store a definition: new, or a new version of one (same name and UUID)."""
        with self._names_lock():
            others = self._all()
            n = parse_network(xml, source, taken_bridges=[o.bridge for o in others])
            for o in others:
                if o.name == n.name and o.uuid != n.uuid:
                    raise OperationFailed(f"network '{n.name}' already exists with uuid {o.uuid}")
                if o.uuid == n.uuid and o.name != n.name:
                    raise OperationFailed(f"network '{o.name}' is already defined with uuid {n.uuid}")
                if o.name != n.name and o.bridge == n.bridge:
                    raise OperationFailed(f"bridge name '{n.bridge}' is already used by network '{o.name}'")
            files.atomic_write(self._def_path(n.name), network_xml(n))
        return self.info(n.name)

    def undefine(self, name: str) -> None:
        info = self.info(name)
        with self._lock(name):
            if self.is_active(name):
                raise OperationInvalid(f"network '{name}' is still active: net-destroy it first")
            with self._names_lock():
                files.remove(self._def_path(info.name))
                files.remove(self.root / "autostart" / name)

    def set_autostart(self, name: str, on: bool = True) -> None:
        self.info(name)
        marker = self.root / "autostart" / name
        if on:
            files.atomic_write(marker, "")
        else:
            files.remove(marker)

    # --- looking ------------------------------------------------------------------------
    def is_active(self, name: str) -> bool:
        record = files.read_json(self._active_file(name))
        return bool(record) and hbridge.exists(record.get("bridge", ""))

    def info(self, name: str) -> NetworkInfo:
        n = self.load(name)
        return NetworkInfo(n.name, n.uuid, n.bridge, self.is_active(name), True,
                           (self.root / "autostart" / name).exists(), n)

    def list(self, active: bool = True, inactive: bool = True) -> list[NetworkInfo]:
        infos = [self.info(n) for n in self.names()]
        return [i for i in infos if (active and i.active) or (inactive and not i.active)]

    def dumpxml(self, name: str) -> str:
        return network_xml(self.load(name))

    def bridge_of(self, name: str) -> str:
        """The bridge a domain's ``<interface type='network'>`` joins (the network must be active)."""
        try:
            info = self.info(name)
        except NoNetwork:
            raise NoNetwork(f"no network with matching name '{name}'") from None
        if not info.active:
            raise OperationInvalid(f"network '{name}' is not active")
        return info.bridge

    def leases(self, name: str) -> list[dnsmasq.Lease]:
        self.info(name)
        now = time.time()
        return [lease for lease in dnsmasq.leases(self.dnsmasq_files(name))
                if lease.expiry == 0 or lease.expiry > now]

    # --- life cycle ---------------------------------------------------------------------
    def start(self, name: str) -> None:
        n = self.load(name)
        with self._lock(name):
            if self.is_active(name):
                raise OperationInvalid(f"network '{name}' is already active")
            try:
                with contextlib.ExitStack() as undo:
                    self._bring_up(n, undo)
                    undo.pop_all()
            except HostNetworkError as e:
                raise OperationFailed(str(e)) from None

    def _bring_up(self, n: NetworkDef, undo: contextlib.ExitStack) -> None:
        run = self._run(n.name)
        if files.read_json(self._active_file(n.name)):     # left by a host reboot or a killed manager
            dnsmasq.stop(self.dnsmasq_files(n.name))
            nat.remove(n.bridge)
            files.remove(self._active_file(n.name))
        cfg = n.dnsmasq_config()
        if cfg is not None:
            dnsmasq.find()                          # before anything is created
        self._check_free(n)
        run.mkdir(parents=True, exist_ok=True)
        hbridge.create(n.bridge, n.address, n.mac, n.stp, n.delay)
        undo.callback(hbridge.delete, n.bridge)
        if n.address is not None:
            nat.install(n.bridge, n.address.network, n.forward)
            undo.callback(nat.remove, n.bridge)
            if n.forward != "isolated":
                nat.enable_forwarding()
        pid = None
        if cfg is not None:
            pid = dnsmasq.start(cfg, self.dnsmasq_files(n.name))
            undo.callback(dnsmasq.stop, self.dnsmasq_files(n.name))
        files.write_json(self._active_file(n.name), {"bridge": n.bridge, "dnsmasq": pid,
                                                     "table": nat.table_name(n.bridge) if n.address else None,
                                                     "started": time.time()})

    def _check_free(self, n: NetworkDef) -> None:
        if hbridge.exists(n.bridge):
            raise HostNetworkError(f"bridge name '{n.bridge}' is already in use by an interface")
        if n.address is not None:
            for ifname, subnet in hbridge.subnets_in_use():
                if subnet.overlaps(n.address.network):
                    raise HostNetworkError(f"network {n.address.network} is already in use by interface {ifname}")

    def destroy(self, name: str) -> None:
        """Stop dnsmasq, drop the table, delete the bridge (each step even if
        an earlier one found its part already gone)."""
        n = self.load(name)
        with self._lock(name):
            if not files.read_json(self._active_file(name)):
                raise OperationInvalid(f"network '{name}' is not active")
            files.remove(self._active_file(name))
            errors = []
            for step in (lambda: dnsmasq.stop(self.dnsmasq_files(name)), lambda: nat.remove(n.bridge),
                         lambda: hbridge.delete(n.bridge)):
                try:
                    step()
                except HostNetworkError as e:
                    errors.append(str(e))
            if errors:
                raise OperationFailed("; ".join(errors))

    def autostart_all(self) -> list[str]:
        started = []
        for info in self.list(active=False):
            if info.autostart:
                self.start(info.name)
                started.append(info.name)
        return started
