"""The virtio device core shared by every device and both transports:
feature negotiation, device status, reset, queue kicks and interrupts.

A transport (virtio-pci or virtio-mmio) turns register accesses into calls
on :class:`VirtioDevice` and gives it a :class:`Transport` to raise
interrupts with; a device subclass only says what its queues and config
space are and what a request does.  All queue processing happens on the
device's :class:`IoThread`, under ``self.lock`` so a reset from a vCPU
thread never races a request in flight.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any, Protocol

from kvmkit.devices.virtio.constants import (
    F_EVENT_IDX, F_INDIRECT_DESC, F_VERSION_1, Status, bit)
from kvmkit.devices.virtio.iothread import IoThread, drain
from kvmkit.devices.virtio.queue import Chain, ChainError, Virtqueue
from kvmkit.kvm import eventfd
from kvmkit.memory.guest_memory import GuestMemory

log = logging.getLogger(__name__)

BASE_FEATURES = bit(F_VERSION_1) | bit(F_EVENT_IDX) | bit(F_INDIRECT_DESC)


class Transport(Protocol):
    def signal_queue(self, queue: Virtqueue) -> None:
        """Interrupt the guest for used buffers on ``queue``."""

    def signal_config(self) -> None:
        """Interrupt the guest for a config change (or DEVICE_NEEDS_RESET)."""

    def describe(self) -> dict[str, Any]:
        """Where the device sits (for query())."""

    def close(self) -> None:
        """Drop ioeventfds, irqfds and MSI routes."""

    def reset(self) -> None:
        """Back to power-on register state (machine reset)."""

    def save_state(self) -> dict: ...

    def load_state(self, state: dict) -> None: ...


class VirtioDevice:
    """Base class: subclasses set ``device_id``, ``queue_sizes``, and override
    ``device_features``, ``config_bytes``, ``handle_chain`` or ``process_queue``."""

    device_id: int = 0
    queue_sizes: tuple[int, ...] = (256,)
    kind: str = "virtio"

    def __init__(self, memory: GuestMemory, name: str) -> None:
        self.memory = memory
        self.name = name
        self.lock = threading.RLock()
        self.queues = [Virtqueue(memory, i, s) for i, s in enumerate(self.queue_sizes)]
        for q in self.queues:
            q.notify_fd = eventfd()
        self.features = BASE_FEATURES | self.device_features()
        self.driver_features = 0
        self.status = 0
        self.config_generation = 0
        self.transport: Transport | None = None
        self.io = IoThread(name)
        self.broken: str | None = None
        for q in self.queues:
            self.io.add(q.notify_fd, lambda q=q: self._on_kick(q))

    # -- subclass hooks ------------------------------------------------------
    def device_features(self) -> int:
        return 0

    def config_bytes(self) -> bytes:
        """The device-specific configuration space as the driver reads it."""
        return b""

    def write_config(self, offset: int, size: int, value: int) -> None:
        """Most config spaces are read-only; writes are ignored."""

    def on_activate(self) -> None:
        """Called (with the lock held) once DRIVER_OK is set and queues are live."""

    def on_reset(self) -> None:
        """Called (with the lock held) on reset; drop per-session state."""

    def handle_chain(self, queue: Virtqueue, chain: Chain) -> int | None:
        """Serve one request; return bytes written to push it now, or None to keep it."""
        return 0

    def device_state(self) -> dict[str, Any]:
        return {}

    def load_device_state(self, state: dict[str, Any]) -> None:
        pass

    def close_backend(self) -> None:
        pass

    # -- driver-facing (called by transports, from vCPU threads) -----------
    def feature_word(self, select: int) -> int:
        return (self.features >> (32 * select)) & 0xFFFFFFFF if select < 2 else 0

    def set_driver_word(self, select: int, value: int) -> None:
        if select >= 2 or self.status & Status.FEATURES_OK:
            return
        mask = 0xFFFFFFFF << (32 * select)
        self.driver_features = (self.driver_features & ~mask) | ((value & 0xFFFFFFFF) << (32 * select))

    def driver_word(self, select: int) -> int:
        return (self.driver_features >> (32 * select)) & 0xFFFFFFFF if select < 2 else 0

    def read_config(self, offset: int, size: int) -> int:
        data = self.config_bytes()
        if offset < 0 or offset + size > len(data):
            return 0
        return int.from_bytes(data[offset:offset + size], "little")

    def set_status(self, value: int) -> None:
        with self.lock:
            value &= 0xFF
            if value == 0:
                self.virtio_reset()
                return
            old = self.status
            new = value & ~Status.DEVICE_NEEDS_RESET | (old & Status.DEVICE_NEEDS_RESET)
            if new & Status.FEATURES_OK and not old & Status.FEATURES_OK:
                if not self._features_acceptable():
                    new &= ~Status.FEATURES_OK
            self.status = new
            if new & Status.DRIVER_OK and not old & Status.DRIVER_OK and new & Status.FEATURES_OK:
                self._activate()

    def _features_acceptable(self) -> bool:
        f = self.driver_features
        return not f & ~self.features and bool(f & bit(F_VERSION_1))

    def reset(self) -> None:
        """Machine reset (power cycle): the device and its transport registers."""
        with self.lock:
            self.virtio_reset()
            if self.transport is not None:
                self.transport.reset()

    def virtio_reset(self) -> None:
        """The driver wrote 0 to device_status (virtio 1.2 §2.4)."""
        with self.lock:
            for q in self.queues:
                q.reset()
            self.driver_features = 0
            self.status = 0
            self.broken = None
            self.on_reset()

    def _activate(self) -> None:
        try:
            for q in self.queues:
                if q.ready:
                    q.activate(self.driver_features)
        except ChainError as exc:
            self.needs_reset(str(exc))
            return
        try:
            self.on_activate()
        except OSError as exc:            # the backend refused what the driver asked for
            self.needs_reset(f"activating: {exc.strerror or exc}")
            return
        for q in self.queues:                  # kicks sent before activation were dropped
            os.eventfd_write(q.notify_fd, 1)

    @property
    def running(self) -> bool:
        return bool(self.status & Status.DRIVER_OK) and self.broken is None

    def needs_reset(self, reason: str) -> None:
        """The driver broke the protocol: stop using the rings and tell it."""
        log.warning("%s: device needs reset: %s", self.name, reason)
        self.broken = reason
        self.status |= Status.DEVICE_NEEDS_RESET
        for q in self.queues:
            q.deactivate()
        if self.status & Status.DRIVER_OK and self.transport is not None:
            self.transport.signal_config()

    def config_changed(self) -> None:
        self.config_generation = (self.config_generation + 1) & 0xFF
        if self.status & Status.DRIVER_OK and self.transport is not None:
            self.transport.signal_config()

    # -- queue processing (I/O thread) -------------------------------------
    def kick(self, index: int) -> None:
        """A queue notify that came through a register write rather than ioeventfd."""
        if 0 <= index < len(self.queues):
            os.eventfd_write(self.queues[index].notify_fd, 1)

    def _on_kick(self, q: Virtqueue) -> None:
        drain(q.notify_fd)
        with self.lock:
            if not self.running or not q.active:
                return
            try:
                self.process_queue(q)
            except ChainError as exc:
                self.needs_reset(str(exc))

    def process_queue(self, q: Virtqueue) -> None:
        """Drain ``q`` with kicks off, re-arm, and interrupt once for the batch."""
        while True:
            q.disable_notify()
            while (chain := q.pop()) is not None:
                written = self.handle_chain(q, chain)
                if written is not None:      # None: the device keeps the chain for later
                    q.push(chain.head, written)
            if not q.enable_notify():
                break
        self.interrupt(q)

    def interrupt(self, q: Virtqueue) -> None:
        if q.needs_interrupt() and self.transport is not None:
            self.transport.signal_queue(q)

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        self.io.start()

    def close(self) -> None:
        self.io.close()
        if self.transport is not None:
            self.transport.close()
        with self.lock:
            for q in self.queues:
                q.deactivate()
                if q.notify_fd is not None:
                    os.close(q.notify_fd)
                    q.notify_fd = None
            self.close_backend()

    def save_state(self) -> dict[str, Any]:
        with self.lock:
            return {"features": self.features, "driver_features": self.driver_features,
                    "status": self.status, "generation": self.config_generation,
                    "queues": [q.save_state() for q in self.queues],
                    "device": self.device_state(),
                    "transport": self.transport.save_state() if self.transport else None}

    def load_state(self, state: dict[str, Any]) -> None:
        with self.lock:
            if state["features"] & ~self.features:
                from kvmkit.errors import ConfigError
                raise ConfigError(f"{self.name}: saved features {state['features']:#x} not offered here")
            if self.transport is not None and state.get("transport") is not None:
                self.transport.load_state(state["transport"])
            self.driver_features = state["driver_features"]
            self.status = state["status"]
            self.config_generation = state["generation"]
            for q, s in zip(self.queues, state["queues"]):
                q.load_state(s)
            self.load_device_state(state.get("device", {}))
            if self.status & Status.DRIVER_OK and not self.status & Status.DEVICE_NEEDS_RESET:
                self._activate()

    def query(self) -> dict[str, Any]:
        info: dict[str, Any] = {"name": self.name, "type": self.kind, "device-id": self.device_id,
                                "status": self.status, "features": self.driver_features,
                                "broken": self.broken}
        if self.transport is not None:
            info.update(self.transport.describe())
        return info
