"""A small, safe XML tree with line numbers, and a writer in libvirt's style.

Why not ``xml.etree``: its elements forget where they came from, and a user
who made a typo in a domain file wants "line 12" in the error.  The parser
is expat (as etree's is) with DTDs refused outright, so no entity expansion
or external fetch can happen whatever the input.  The writer indents by two
spaces and quotes attributes with ``'`` as ``virsh dumpxml`` does.
"""

from __future__ import annotations

import xml.parsers.expat
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from kvmkit.manager.errors import XmlError


@dataclass
class Node:
    """One element: ``text`` is its stripped character data."""

    tag: str
    attrs: dict[str, str] = field(default_factory=dict)
    children: list["Node"] = field(default_factory=list)
    text: str = ""
    line: int = 0

    def find(self, tag: str) -> "Node | None":
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list["Node"]:
        return [c for c in self.children if c.tag == tag]

    def child_text(self, tag: str) -> str | None:
        c = self.find(tag)
        return None if c is None else c.text


def parse(text: str | bytes, source: str = "(xml)") -> Node:
    """Parse a document; :class:`XmlError` names the line, column and problem."""
    parser = xml.parsers.expat.ParserCreate()
    stack: list[Node] = []
    texts: list[list[str]] = []
    root: list[Node] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        node = Node(tag, dict(attrs), line=parser.CurrentLineNumber)
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)
        texts.append([])

    def end(tag: str) -> None:
        node = stack.pop()
        node.text = "".join(texts.pop()).strip()

    def chars(data: str) -> None:
        if texts:
            texts[-1].append(data)

    def doctype(*_: object) -> None:
        raise XmlError(f"{source}:{parser.CurrentLineNumber}: DOCTYPE declarations are not accepted")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = doctype
    try:
        parser.Parse(text, True)
    except xml.parsers.expat.ExpatError as e:
        raise XmlError(f"{source}:{e.lineno}: {xml.parsers.expat.ErrorString(e.code)} "
                       f"(line {e.lineno}, column {e.offset + 1})") from None
    if not root:
        raise XmlError(f"{source}:1: the document has no root element")
    return root[0]


def _attr(value: str) -> str:
    return escape(value, {"'": "&apos;", "\n": "&#10;"})


def serialise(node: Node, indent: int = 0) -> str:
    """``node`` as text, children indented by two spaces, ending in a newline."""
    pad = "  " * indent
    attrs = "".join(f" {k}='{_attr(v)}'" for k, v in node.attrs.items())
    if not node.children and not node.text:
        return f"{pad}<{node.tag}{attrs}/>\n"
    if not node.children:
        return f"{pad}<{node.tag}{attrs}>{escape(node.text)}</{node.tag}>\n"
    inner = "".join(serialise(c, indent + 1) for c in node.children)
    return f"{pad}<{node.tag}{attrs}>\n{inner}{pad}</{node.tag}>\n"


def element(tag: str, text: str = "", children: list[Node] | None = None, **attrs: str | None) -> Node:
    """Build a node; ``None`` attributes are left out (so callers need no ifs)."""
    return Node(tag, {k.rstrip("_").replace("__", "-"): v for k, v in attrs.items() if v is not None},
                [c for c in (children or []) if c is not None], text)
