"""Cut a QMP byte stream into JSON messages and parse them like QEMU does.

QEMU's monitor does not read lines: it feeds bytes to a streaming JSON lexer
and hands each complete top-level value to the dispatcher, so a request may
span lines and two requests may share one.  Clients (qemu.qmp, qmp-shell,
``socat`` scripts) rely on both, so :class:`MessageSplitter` tracks brackets
and strings the same way.  What it hands back is either a parsed value or a
:class:`QmpError` carrying QEMU's ``"JSON parse error, ..."`` wording.

A message that grows past ``max_size`` without completing raises
:class:`MessageTooLarge`: the server then drops that connection, because a
client streaming an endless value would otherwise make the VMM buffer it all.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kvmkit.monitor.protocol import QmpError

DEFAULT_MAX_SIZE = 1 << 20      # bytes in one pending message
MAX_NESTING = 1024              # QEMU's json-streamer limit

_STRUCTURAL = re.compile(rb"[{}\[\]\"']")
_SCALAR_END = re.compile(rb"[\s{}\[\]\"',:]")
_NON_SPACE = re.compile(rb"\S")
_STRING_SPECIAL = {
    ord('"'): re.compile(rb'["\\\x00-\x1f]'),
    ord("'"): re.compile(rb"['\\\x00-\x1f]"),
}
_OPEN = b"{["
_CLOSE = b"}]"
_BACKSLASH = ord("\\")


class MessageTooLarge(Exception):
    """A pending message exceeded the size limit; the connection must go."""


class MessageSplitter:
    """Incremental splitter: ``feed(bytes)`` returns the messages it completed."""

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._pos = 0               # next byte to scan
        self._start = 0             # first byte of the pending message
        self._stack = bytearray()   # open brackets of the pending message
        self._quote: int | None = None
        self._single_quotes = False
        self._deepest = 0

    def feed(self, data: bytes) -> list[Any | QmpError]:
        """Scan ``data`` and return every message it completed, in order."""
        self._buf += data
        out: list[Any | QmpError] = []
        buf = self._buf
        while self._pos < len(buf):
            if self._quote is not None:
                if not self._scan_string(out):
                    break
            elif self._stack:
                if not self._scan_container(out):
                    break
            elif not self._scan_top(out):
                break
        pending = len(buf) - self._start
        del buf[:self._start]
        self._pos -= self._start
        self._start = 0
        if pending > self.max_size:
            raise MessageTooLarge(f"a QMP message grew past {self.max_size} bytes without ending")
        return out

    # -- scanning states; each returns False when it needs more input --------

    def _scan_top(self, out: list[Any | QmpError]) -> bool:
        buf = self._buf
        m = _NON_SPACE.search(buf, self._pos)
        if m is None:
            self._pos = self._start = len(buf)
            return False
        self._pos = self._start = m.start()
        c = buf[self._pos]
        if c in _OPEN:
            self._stack.append(c)
            self._pos += 1
        elif c in _STRING_SPECIAL:
            self._quote = c
            self._single_quotes = c == ord("'")
            self._pos += 1
        elif c in _CLOSE:
            self._pos += 1
            self._emit(out, parse_error("expecting value"))
        else:
            end = _SCALAR_END.search(buf, self._pos)
            if end is None:
                self._pos = len(buf)
                return False
            self._pos = end.start() if end.start() > self._pos else self._pos + 1
            self._emit(out, parse_message(bytes(buf[self._start:self._pos])))
        return True

    def _scan_container(self, out: list[Any | QmpError]) -> bool:
        m = _STRUCTURAL.search(self._buf, self._pos)
        if m is None:
            self._pos = len(self._buf)
            return False
        c = self._buf[m.start()]
        self._pos = m.end()
        if c in _OPEN:
            self._stack.append(c)
            self._deepest = max(self._deepest, len(self._stack))
        elif c in _CLOSE:
            self._stack.pop()
            if not self._stack:
                self._emit_message(out)
        else:
            self._quote = c
            self._single_quotes |= c == ord("'")
        return True

    def _scan_string(self, out: list[Any | QmpError]) -> bool:
        assert self._quote is not None
        buf = self._buf
        m = _STRING_SPECIAL[self._quote].search(buf, self._pos)
        if m is None:
            self._pos = len(buf)
            return False
        c = buf[m.start()]
        if c == _BACKSLASH:
            if m.start() + 1 >= len(buf):
                self._pos = m.start()
                return False
            self._pos = m.start() + 2
        elif c == self._quote:
            self._pos = m.end()
            self._quote = None
            if not self._stack:
                self._emit_message(out)
        else:
            # A raw control character (a newline, typically) cannot be inside a
            # JSON string: the client lost a quote.  Fail now rather than
            # swallowing every later request into this string.
            stray = bytes(buf[self._start:m.end()]).decode("utf-8", "replace")
            self._pos = m.end()
            self._quote = None
            self._stack.clear()
            self._emit(out, parse_error(f"stray '{stray}'"))
        return True

    def _emit_message(self, out: list[Any | QmpError]) -> None:
        raw = bytes(self._buf[self._start:self._pos])
        if self._deepest > MAX_NESTING:
            # Answer once for the whole value (the size limit bounds the scan).
            self._emit(out, parse_error("nesting too deep"))
        else:
            self._emit(out, parse_message(raw, self._single_quotes))

    def _emit(self, out: list[Any | QmpError], item: Any | QmpError) -> None:
        out.append(item)
        self._start = self._pos
        self._single_quotes = False
        self._deepest = 0


def parse_error(detail: str) -> QmpError:
    return QmpError(f"JSON parse error, {detail}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid keyword '{name}'")


def parse_message(raw: bytes, single_quotes: bool = False) -> Any | QmpError:
    """Parse one complete JSON value, returning QEMU's error on failure.

    Standard JSON goes through the C parser.  QEMU also accepts single-quoted
    strings (its own test scripts use them); those messages are rewritten to
    standard JSON first.
    """
    text = raw.decode("utf-8", "replace")
    if single_quotes:
        text = _requote(text)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        return parse_error(_qemu_wording(error))
    except (ValueError, RecursionError) as error:
        return parse_error(str(error))


def _qemu_wording(error: json.JSONDecodeError) -> str:
    """Map Python's json messages onto the ones QEMU's parser prints."""
    msg, doc, pos = error.msg, error.doc, error.pos
    if msg == "Expecting value":
        word = re.match(r"[A-Za-z_][A-Za-z0-9_]*", doc[pos:])
        return f"invalid keyword '{word.group()}'" if word else "expecting value"
    if msg.startswith("Expecting property name"):
        return "expecting value" if doc[pos:pos + 1] == "}" else "key is not a string in object"
    if msg == "Expecting ':' delimiter":
        return "missing : in object pair"
    if msg == "Expecting ',' delimiter":
        inside = _innermost_container(doc, pos)
        return "expected separator in dict" if inside == "{" else "expected separator in list"
    if msg.startswith("Invalid \\u"):
        return "invalid hex escape sequence in string"
    if msg.startswith("Invalid \\escape"):
        return "invalid escape sequence in string"
    return msg[0].lower() + msg[1:]


def _innermost_container(doc: str, pos: int) -> str:
    stack: list[str] = []
    in_string = escaped = False
    for ch in doc[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append(ch)
        elif ch in "}]" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _requote(text: str) -> str:
    """Rewrite QEMU-style 'single-quoted' strings as standard JSON strings."""
    out: list[str] = []
    quote: str | None = None
    i = 0
    while i < len(text):
        ch = text[i]
        if quote is None:
            if ch in "'\"":
                quote = ch
                out.append('"')
            else:
                out.append(ch)
        elif ch == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out.append("'" if nxt == "'" else ch + nxt)
            i += 1
        elif ch == quote:
            quote = None
            out.append('"')
        elif ch == '"':
            out.append('\\"')
        else:
            out.append(ch)
        i += 1
    return "".join(out)
