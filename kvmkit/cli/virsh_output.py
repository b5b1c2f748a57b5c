"""virsh's output shapes: its tables (libvirt's vsh-table: a space before
every cell, columns two spaces past the widest cell, a dashed line under the
header) and its ``Label:         value`` records (the label padded to 15)."""

from __future__ import annotations

from collections.abc import Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        out = ""
        for i, cell in enumerate(cells):
            out += f" {cell}"
            if i < len(cells) - 1:
                out += " " * (widths[i] - len(str(cell)) + 2)
        return out + "\n"

    return line(header) + "".join("-" * (w + 3) for w in widths) + "\n" + "".join(line(r) for r in rows)


def fields(pairs: Sequence[tuple[str, object]]) -> str:
    return "".join(f"{label + ':':<15} {value}\n" for label, value in pairs)
