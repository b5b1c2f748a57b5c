"""A VM's configuration: frozen and validated before anything touches KVM,
so bad input fails with a one-line message and nothing half-built."""

from __future__ import annotations

import os
import stat
import uuid as _uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmkit.errors import ConfigError
from kvmkit.sizes import parse_size

MIN_MEMORY = 32 << 20
DEFAULT_MEMORY = 512 << 20


@dataclass(frozen=True)
class SerialSpec:
    """Where COM1 goes: ``stdio``, ``file:PATH``, ``unix:PATH`` (a listening
    socket), ``null``, or ``buffer`` (kept in memory for the Python API)."""

    kind: str = "buffer"
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> "SerialSpec":
        if text in ("stdio", "null", "buffer"):
            return cls(text)
        for kind in ("file", "unix"):
            if text.startswith(kind + ":") and len(text) > len(kind) + 1:
                return cls(kind, text[len(kind) + 1:])
        raise ConfigError(f"invalid serial {text!r}: expected stdio, file:PATH, unix:PATH or null")


def _check_readable(label: str, path: Path) -> None:
    """A kernel or initrd the VMM can read, or a one-line ConfigError saying
    why not (a path under a directory we may not search fails in ``stat``)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{label} {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{label} {path}: {(exc.strerror or str(exc)).lower()}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{label} {path}: is a directory")
    if not os.access(path, os.R_OK):
        raise ConfigError(f"{label} {path}: permission denied")


@dataclass(frozen=True)
class VmConfig:
    kernel: Path
    initrd: Path | None = None
    cmdline: str = "console=ttyS0"
    memory: int = DEFAULT_MEMORY
    cpus: int = 1
    serial: SerialSpec = field(default_factory=SerialSpec)
    host_compat: str = "auto"           # auto | on | off: emulator workarounds (HOST-NOTES)
    name: str | None = None
    uuid: str = field(default_factory=lambda: str(_uuid.uuid4()))
    debug_ports: bool = True            # 0xE9 debugcon, 0xF4 exit port
    start_paused: bool = False
    reboot_action: str = "exit"         # exit | reset: what a guest reboot does
    virtio: Any = None                  # kvmkit.devices.virtio.config.VirtioSpecs, when present
    acpi: bool = True                   # ACPI tables + PM1 block: guest poweroff and a power button
    resources: Any = None               # kvmkit.host.resources.ResourceSpec: pinning, cgroup limits
    memory_backing: Any = None          # kvmkit.memory.backing.MemoryBacking (None: anonymous, KSM on)

    def __post_init__(self) -> None:
        if self.memory < MIN_MEMORY:
            raise ConfigError(f"memory {self.memory >> 20} MiB is too small: at least {MIN_MEMORY >> 20} MiB")
        if self.cpus < 1:
            raise ConfigError(f"cpus must be at least 1, not {self.cpus}")
        if self.host_compat not in ("auto", "on", "off"):
            raise ConfigError(f"host-compat must be auto, on or off, not {self.host_compat!r}")
        if self.reboot_action not in ("exit", "reset"):
            raise ConfigError(f"reboot action must be exit or reset, not {self.reboot_action!r}")
        if self.resources is not None:
            self.resources.validate(self.cpus, self.memory)
        for label, path in (("kernel", self.kernel), ("initrd", self.initrd)):
            if path is None:
                continue
            _check_readable(label, Path(path))
        if self.initrd is not None:
            size = Path(self.initrd).stat().st_size
            if size > self.memory // 2:
                raise ConfigError(f"initrd {self.initrd} ({size >> 20} MiB) is too large for "
                                  f"{self.memory >> 20} MiB of guest memory")

    @classmethod
    def build(cls, kernel: str | os.PathLike, *, memory: int | str = DEFAULT_MEMORY,
              initrd: str | os.PathLike | None = None, serial: str | SerialSpec = "buffer",
              **kw: Any) -> "VmConfig":
        """Convenience constructor accepting strings the way the CLI does."""
        if not str(kernel):
            raise ConfigError("kernel: the path is empty")
        if initrd is not None and not str(initrd):
            raise ConfigError("initrd: the path is empty")
        if isinstance(memory, str):
            memory = parse_size(memory, default_unit="M", what="memory size")
        if isinstance(serial, str):
            serial = SerialSpec.parse(serial)
        return cls(kernel=Path(kernel), initrd=Path(initrd) if initrd else None,
                   memory=memory, serial=serial, **kw)
