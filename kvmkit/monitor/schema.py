"""Argument schemas for QMP commands, checked with QEMU's error wording.

A command declares its arguments as data (:class:`Arg` with a type from this
module) instead of picking them out of a dict by hand, so every command
rejects missing, extra and mistyped arguments the same way, with the messages
QEMU's QAPI input visitor prints ("Parameter 'x' is missing", "Invalid
parameter type for 'x', expected: string", "Parameter 'x' is unexpected").
Later commands (migrate, snapshots, hotplug) only add types here if they need
a new shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from kvmkit.monitor.protocol import QmpError


class ArgType(Protocol):
    def check(self, value: Any, path: str) -> Any:
        """Return the (possibly converted) value or raise :class:`QmpError`."""


def _wrong_type(path: str, expected: str) -> QmpError:
    return QmpError(f"Invalid parameter type for '{path}', expected: {expected}")


@dataclass(frozen=True)
class Scalar:
    """A JSON scalar of one kind; ``expected`` is QEMU's name for it."""

    expected: str
    types: tuple[type, ...]

    def check(self, value: Any, path: str) -> Any:
        # bool is an int in Python but not in JSON.
        if isinstance(value, bool) and bool not in self.types:
            raise _wrong_type(path, self.expected)
        if not isinstance(value, self.types):
            raise _wrong_type(path, self.expected)
        return value


@dataclass(frozen=True)
class Int:
    """An integer within a QAPI integer type's range (int64, uint8, ...)."""

    label: str = "int64"
    low: int = -(1 << 63)
    high: int = (1 << 63) - 1

    def check(self, value: Any, path: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _wrong_type(path, "integer")
        if not self.low <= value <= self.high:
            raise QmpError(f"Parameter '{path}' expects {self.label}")
        return value


@dataclass(frozen=True)
class AnyValue:
    def check(self, value: Any, path: str) -> Any:
        return value


@dataclass(frozen=True)
class Enum:
    values: tuple[str, ...]

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, str) or isinstance(value, bool):
            raise _wrong_type(path, "string")
        if value not in self.values:
            raise QmpError(f"Parameter '{path}' does not accept value '{value}'")
        return value


@dataclass(frozen=True)
class ListOf:
    item: ArgType

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise _wrong_type(path, "array")
        return [self.item.check(v, f"{path}[{i}]") for i, v in enumerate(value)]


@dataclass(frozen=True)
class Arg:
    """One named argument; optional ones may be absent (never null)."""

    name: str
    type: ArgType
    optional: bool = False

    @property
    def keyword(self) -> str:
        """The Python keyword a handler receives it as (``cpu-index`` → ``cpu_index``)."""
        return self.name.replace("-", "_")


@dataclass(frozen=True)
class Struct:
    """A JSON object with named members (a nested QAPI struct)."""

    members: tuple[Arg, ...]

    def check(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise _wrong_type(path, "object")
        return check_arguments(self.members, value, prefix=f"{path}.")


STR = Scalar("string", (str,))
BOOL = Scalar("boolean", (bool,))
NUMBER = Scalar("number", (int, float))
INT = Int()
UINT64 = Int("uint64", 0, (1 << 64) - 1)
ANY = AnyValue()


def check_arguments(spec: tuple[Arg, ...], given: dict[str, Any],
                    prefix: str = "") -> dict[str, Any]:
    """Validate ``given`` against ``spec`` in QEMU's order: each declared
    member (missing or mistyped), then anything left over (unexpected).

    Returns the values keyed by Python keyword, ready for ``handler(**kw)``.
    """
    out: dict[str, Any] = {}
    for arg in spec:
        path = prefix + arg.name
        if arg.name not in given:
            if not arg.optional:
                raise QmpError(f"Parameter '{path}' is missing")
            continue
        out[arg.keyword] = arg.type.check(given[arg.name], path)
    declared = {arg.name for arg in spec}
    for name in given:
        if name not in declared:
            raise QmpError(f"Parameter '{prefix}{name}' is unexpected")
    return out
