"""The command table: how later issues (migrate, snapshots, hotplug) add commands."""

from __future__ import annotations

import pytest

from kvmkit.errors import ImageError
from kvmkit.monitor.catalog import default_commands
from kvmkit.monitor.commands import (Call, Command, CommandContext, CommandTable, SessionState,
                                     execute, resolve)
from kvmkit.monitor.protocol import VersionInfo
from kvmkit.monitor.schema import BOOL, INT, STR, UINT64, Arg, Enum, ListOf, Struct


def migrate(ctx: CommandContext, uri: str, detach: bool = False,
            caps: dict | None = None) -> dict:
    return {"uri": uri, "detach": detach, "caps": caps}


def broken(ctx: CommandContext) -> None:
    raise RuntimeError("boom")


def refused(ctx: CommandContext) -> None:
    raise ImageError("disk.qcow2: image is locked")


CAPS = Struct((Arg("xbzrle", BOOL), Arg("limit", UINT64, optional=True),
               Arg("mode", Enum(("a", "b")), optional=True)))


@pytest.fixture
def table() -> CommandTable:
    table = default_commands()
    table.add(Command("x-test-migrate", migrate, (Arg("uri", STR), Arg("detach", BOOL, optional=True),
                                           Arg("caps", CAPS, optional=True))))
    table.add(Command("broken", broken))
    table.add(Command("refused", refused))
    table.add(Command("sum", lambda ctx, values: sum(values), (Arg("values", ListOf(INT)),)))
    return table


def run(table: CommandTable, message: dict, negotiated: bool = True) -> dict:
    session = SessionState(1, negotiated=negotiated)
    call = resolve(table, session, message)
    if not isinstance(call, Call):
        return call
    return execute(call, CommandContext(None, table, session, VersionInfo()))  # type: ignore[arg-type]


def error(desc: str) -> dict:
    return {"error": {"class": "GenericError", "desc": desc}}


def test_a_registered_command_is_dispatched_with_keywords(table):
    assert run(table, {"execute": "x-test-migrate", "arguments": {"uri": "tcp:x:1"}, "id": 1}) == {
        "return": {"uri": "tcp:x:1", "detach": False, "caps": None}, "id": 1}
    reply = run(table, {"execute": "x-test-migrate",
                        "arguments": {"uri": "u", "caps": {"xbzrle": True, "mode": "b"}}})
    assert reply["return"]["caps"] == {"xbzrle": True, "mode": "b"}


@pytest.mark.parametrize("arguments, desc", [
    ({"uri": "u", "caps": {}}, "Parameter 'caps.xbzrle' is missing"),
    ({"uri": "u", "caps": {"xbzrle": 1}}, "Invalid parameter type for 'caps.xbzrle', expected: boolean"),
    ({"uri": "u", "caps": {"xbzrle": True, "x": 1}}, "Parameter 'caps.x' is unexpected"),
    ({"uri": "u", "caps": {"xbzrle": True, "limit": -1}}, "Parameter 'caps.limit' expects uint64"),
    ({"uri": "u", "caps": {"xbzrle": True, "mode": "c"}}, "Parameter 'caps.mode' does not accept value 'c'"),
    ({"uri": "u", "caps": []}, "Invalid parameter type for 'caps', expected: object"),
    ({"uri": None}, "Invalid parameter type for 'uri', expected: string"),
])
def test_nested_argument_errors(table, arguments, desc):
    assert run(table, {"execute": "x-test-migrate", "arguments": arguments}) == error(desc)


def test_lists(table):
    assert run(table, {"execute": "sum", "arguments": {"values": [1, 2, 3]}}) == {"return": 6}
    assert run(table, {"execute": "sum", "arguments": {"values": [1, "2"]}}) == \
        error("Invalid parameter type for 'values[1]', expected: integer")
    assert run(table, {"execute": "sum", "arguments": {"values": 1}}) == \
        error("Invalid parameter type for 'values', expected: array")


def test_user_errors_and_bugs_both_get_answers(table):
    assert run(table, {"execute": "refused"}) == error("disk.qcow2: image is locked")
    assert run(table, {"execute": "broken"}) == error("broken: internal error: boom")


def test_names_are_unique(table):
    with pytest.raises(ValueError, match="registered twice"):
        table.add(Command("stop", broken))


def test_new_commands_are_listed_and_gated_by_negotiation(table):
    names = [entry["name"] for entry in run(table, {"execute": "query-commands"})["return"]]
    assert "x-test-migrate" in names and "broken" in names
    assert run(table, {"execute": "x-test-migrate", "arguments": {"uri": "u"}}, negotiated=False) == {
        "error": {"class": "CommandNotFound",
                  "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}}


class _Keyboard:
    """Just enough VmControl for send-key: what reached the keyboard controller."""

    def __init__(self) -> None:
        self.sent = b""

    def send_keys(self, scancodes: bytes) -> None:
        self.sent += scancodes


def test_send_key_presses_a_chord_and_releases_it_in_reverse(table):
    from kvmkit.devices.i8042 import CTRL_ALT_DEL
    kbd = _Keyboard()
    session = SessionState(1, negotiated=True)
    keys = [{"type": "qcode", "data": k} for k in ("ctrl", "alt", "delete")]
    call = resolve(table, session, {"execute": "send-key", "arguments": {"keys": keys}})
    assert execute(call, CommandContext(kbd, table, session, VersionInfo())) == {"return": {}}
    assert kbd.sent == CTRL_ALT_DEL
    bad = resolve(table, session, {"execute": "send-key",
                                   "arguments": {"keys": [{"type": "qcode", "data": "nokey"}]}})
    assert execute(bad, CommandContext(kbd, table, session, VersionInfo())) == \
        error("Parameter 'keys[0].data' does not accept value 'nokey'")
