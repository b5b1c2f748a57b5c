"""The byte-stream splitter: QEMU cuts messages by JSON structure, not lines."""

from __future__ import annotations

import pytest

from kvmkit.monitor.framing import MessageSplitter, MessageTooLarge
from kvmkit.monitor.protocol import QmpError


def feed_all(*chunks: bytes, max_size: int = 1 << 20) -> list:
    splitter = MessageSplitter(max_size)
    out = []
    for chunk in chunks:
        out += splitter.feed(chunk)
    return out


def desc(item) -> str:
    assert isinstance(item, QmpError), item
    return item.desc


def test_one_message_per_line():
    assert feed_all(b'{"execute": "stop"}\n{"execute": "cont"}\n') == [
        {"execute": "stop"}, {"execute": "cont"}]


def test_messages_may_share_a_line_or_span_lines():
    assert feed_all(b'{"a": 1}{"b": [1, {"c": "}"}]}') == [{"a": 1}, {"b": [1, {"c": "}"}]}]
    assert feed_all(b'{"execute":\n  "stop"\n}') == [{"execute": "stop"}]


def test_message_split_across_reads_at_every_byte():
    raw = b'{"execute": "x", "arguments": {"s": "a\\"b\\\\", "l": [1, 2]}}\n'
    splitter = MessageSplitter()
    out = []
    for i in range(len(raw)):
        out += splitter.feed(raw[i:i + 1])
    assert out == [{"execute": "x", "arguments": {"s": 'a"b\\', "l": [1, 2]}}]


def test_top_level_scalars_are_values():
    assert feed_all(b"42\n[1]\n\"s\"\n") == [42, [1], "s"]


def test_single_quoted_strings_like_qemu():
    assert feed_all(b"{'execute': 'say', 'arguments': {'t': 'it\\'s \"x\"'}}") == [
        {"execute": "say", "arguments": {"t": "it's \"x\""}}]


@pytest.mark.parametrize("raw, expected", [
    (b'{"execute": foo}', "JSON parse error, invalid keyword 'foo'"),
    (b'{"execute"}', "JSON parse error, missing : in object pair"),
    (b'{"execute": "stop",}', "JSON parse error, expecting value"),
    (b'{"a" "b"}', "JSON parse error, missing : in object pair"),
    (b'{"a": 1 "b": 2}', "JSON parse error, expected separator in dict"),
    (b'{"a": [1 2]}', "JSON parse error, expected separator in list"),
    (b'{1: 2}', "JSON parse error, key is not a string in object"),
    (b'{"a": "\\q"}', "JSON parse error, invalid escape sequence in string"),
    (b'{"a": NaN}', "JSON parse error, invalid keyword 'NaN'"),
    (b'}', "JSON parse error, expecting value"),
    (b'nul ', "JSON parse error, invalid keyword 'nul'"),
])
def test_parse_errors_use_qemu_wording(raw, expected):
    (item,) = feed_all(raw)
    assert desc(item) == expected


def test_raw_newline_in_string_fails_at_once_and_recovers():
    out = feed_all(b'{"execute": "sto\n{"execute": "cont"}\n')
    assert desc(out[0]).startswith("JSON parse error, stray")
    assert out[1:] == [{"execute": "cont"}]


def test_endless_message_is_refused():
    splitter = MessageSplitter(max_size=1000)
    splitter.feed(b'{"execute": "x", "arguments": {"pad": "')
    with pytest.raises(MessageTooLarge):
        for _ in range(100):
            splitter.feed(b"a" * 100)


def test_completed_messages_do_not_count_against_the_limit():
    splitter = MessageSplitter(max_size=100)
    for _ in range(100):
        assert splitter.feed(b'{"execute": "query-status"}\n') == [{"execute": "query-status"}]


def test_deep_nesting_is_an_error_not_a_crash():
    (item,) = feed_all(b"[" * 2000 + b"]" * 2000)
    assert desc(item).startswith("JSON parse error")
