"""Griffe extension of the documentation site: Google-style ``Args:`` entries that document several
parameters at once (``lr, momentum: as in SGD``, also wrapped over two lines) are split into one
entry per parameter before griffe parses them, so each parameter gets its row in the API pages.
Only the rendered docs change; the docstrings in the code stay as written."""

from __future__ import annotations

import re
from typing import Any

import griffe

SECTIONS = ("Args:", "Arguments:", "Parameters:", "Params:", "Keyword Args:", "Keyword Arguments:", "Other Parameters:")
_GROUPED = re.compile(r"^(\s*)(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)\s*(\([^)]*\))?\s*:(.*)$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def split_grouped_args(text: str) -> str:
    """``text`` with every grouped parameter entry of its argument sections repeated per name."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if line.strip() not in SECTIONS:
            continue
        header = _indent(line)
        item = None
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > header):
            entry = lines[i]
            if not entry.strip():
                out.append(entry)
                i += 1
                continue
            item = _indent(entry) if item is None else item
            if _indent(entry) == item:
                # a name list wrapped over lines: "a, b,\n    c: description"
                while entry.rstrip().endswith(",") and ":" not in entry and i + 1 < len(lines):
                    i += 1
                    entry = entry.rstrip() + " " + lines[i].strip()
                block = [entry]
                while i + 1 < len(lines) and lines[i + 1].strip() and _indent(lines[i + 1]) > item:
                    i += 1
                    block.append(lines[i])
                match = _GROUPED.match(entry)
                if match:
                    pad, names, kind, description = match.groups()
                    for name in (n.strip() for n in names.split(",")):
                        out.append(f"{pad}{name}{' ' + kind if kind else ''}:{description}")
                        out.extend(block[1:])
                else:
                    out.extend(block)
            else:
                out.append(entry)
            i += 1
    return "\n".join(lines and out)


class GroupedArgs(griffe.Extension):
    """Rewrite each object's docstring with :func:`split_grouped_args` when griffe loads it."""

    def on_instance(self, **kwargs: Any) -> None:
        obj = kwargs.get("obj")
        docstring = getattr(obj, "docstring", None)
        if docstring is not None and any(section in docstring.value for section in SECTIONS):
            docstring.value = split_grouped_args(docstring.value)
