"""Walking a parsed XML tree while keeping account of what was understood.

Every attribute and child element a parser asks for is marked as read;
whatever is left when it calls :meth:`Reader.done` is what kvmkit does not
support, reported by its path (``devices/graphics``, ``devices/disk@cache``,
``os/type@arch=aarch64`` for an unsupported value).  One pass collects every
such item, so a user sees the whole list at once, and nothing is ever
silently dropped.
"""

from __future__ import annotations

from kvmkit.manager.errors import XmlError
from kvmkit.manager.xmltree import Node


class Reader:
    root_name = "domain"                     # what the root element is called in messages

    def __init__(self, node: Node, path: str, unsupported: list[str], source: str) -> None:
        self.node = node
        self.path = path                     # "" for the root element
        self.unsupported = unsupported
        self.source = source
        self._attrs: set[str] = set()
        self._tags: set[str] = set()

    # --- what the caller understood ---------------------------------------------
    def attr(self, name: str, allowed: tuple[str, ...] | None = None,
             default: str | None = None) -> str | None:
        """The attribute's value; a value outside ``allowed`` is reported
        unsupported (and ``default`` returned, so parsing can go on)."""
        self._attrs.add(name)
        value = self.node.attrs.get(name)
        if value is None:
            return default
        if allowed is not None and value not in allowed:
            self.report(f"{self._attr_path(name)}={value}")
            return default
        return value

    def child(self, tag: str) -> "Reader | None":
        found = self.children(tag)
        return found[0] if found else None

    def children(self, tag: str) -> list["Reader"]:
        self._tags.add(tag)
        sub = f"{self.path}/{tag}" if self.path else tag
        return [Reader(c, sub, self.unsupported, self.source) for c in self.node.findall(tag)]

    def has(self, tag: str) -> bool:
        return self.child(tag) is not None

    @property
    def text(self) -> str:
        return self.node.text

    def child_text(self, tag: str) -> str | None:
        c = self.child(tag)
        if c is None:
            return None
        c.done()
        return c.text

    # --- what it did not -----------------------------------------------------------
    def report(self, item: str) -> None:
        if item not in self.unsupported:
            self.unsupported.append(item)

    def done(self) -> None:
        """Report every attribute and child element nobody asked for."""
        for name in self.node.attrs:
            if name not in self._attrs:
                self.report(self._attr_path(name))
        for c in self.node.children:
            if c.tag not in self._tags:
                self.report(f"{self.path}/{c.tag}" if self.path else c.tag)

    def error(self, what: str) -> XmlError:
        """A value that is wrong (not merely unsupported): fails at once, with the line."""
        where = self.path or self.root_name
        return XmlError(f"{self.source}:{self.node.line}: {where}: {what}")

    def _attr_path(self, name: str) -> str:
        return f"{self.path or self.root_name}@{name}"
