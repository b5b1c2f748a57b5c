"""The QMP socket's bytes are untrusted: the incremental framer (split at
any point, nested, quoted, oversized) and each command's argument check."""

from __future__ import annotations

import functools
import json

import atheris

from kvmkit.monitor.catalog import default_commands
from kvmkit.monitor.commands import Call, SessionState, resolve
from kvmkit.monitor.framing import MessageSplitter, MessageTooLarge
from kvmkit.monitor.protocol import QmpError, encode

from fuzz.harness import target


@functools.lru_cache(maxsize=1)
def table():
    return default_commands()


def _reply_ok(reply) -> None:
    """An error reply must be QMP: {"error": {"class", "desc"}} and encodable."""
    if isinstance(reply, dict):
        assert set(reply["error"]) == {"class", "desc"}, reply
        json.loads(encode(reply))


@target("qmp-framer", (MessageTooLarge,),
        lambda: [b'{"execute": "qmp_capabilities"}\n{"execute":"query-status","id":1}',
                 b"{'execute': 'query-block'}", b'[{"a": ["\\u00e9", 1e5, null]}]{"x":"\\"}'])
def qmp_framer(data: bytes) -> None:
    """Bytes split into the input's chunk sizes, every message resolved."""
    fdp = atheris.FuzzedDataProvider(data)
    splitter = MessageSplitter(max_size=4096)
    session = SessionState(1, negotiated=fdp.ConsumeBool())
    rest = fdp.ConsumeBytes(len(data))
    pos = 0
    while pos < len(rest):
        n = 1 + (rest[pos] % 64)
        for msg in splitter.feed(rest[pos:pos + n]):
            if isinstance(msg, QmpError):
                continue
            _reply_ok(resolve(table(), session, msg))
        pos += n


def _value(fdp: atheris.FuzzedDataProvider, depth: int = 0):
    kind = fdp.ConsumeIntInRange(0, 8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeInt(9)
    if kind == 3:
        return fdp.ConsumeRegularFloat()
    if kind in (4, 5):
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 24))
    if kind == 6:
        return [_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))]
    return {fdp.ConsumeUnicodeNoSurrogates(8): _value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 3))}


@target("qmp-arguments", (), lambda: [b"", bytes(32), bytes(range(64))])
def qmp_arguments(data: bytes) -> None:
    """Every registered command with arguments of every JSON type, named as
    it declares them (or not), through the envelope and argument checks."""
    fdp = atheris.FuzzedDataProvider(data)
    names = table().names()
    name = names[fdp.ConsumeIntInRange(0, len(names) - 1)]
    declared = [a.name for a in table().get(name).args]
    args = {}
    for _ in range(fdp.ConsumeIntInRange(0, 4)):
        key = declared[fdp.ConsumeIntInRange(0, len(declared) - 1)] if declared and fdp.ConsumeBool() \
            else fdp.ConsumeUnicodeNoSurrogates(6)
        args[key] = _value(fdp)
    message = {"execute": name, "arguments": args}
    if fdp.ConsumeBool():
        message["id"] = _value(fdp)
    if fdp.ConsumeIntInRange(0, 7) == 0:
        message = _value(fdp)                                  # not even an object
    reply = resolve(table(), SessionState(1, negotiated=True), message)
    if isinstance(reply, Call):
        encode({"return": {}, "id": reply.id} if reply.has_id else {"return": {}})
    else:
        _reply_ok(reply)
