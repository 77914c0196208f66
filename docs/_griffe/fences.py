"""A griffe extension for the API pages: the package's docstrings are plain text with doctest
examples and command lines, not Markdown. It fences each doctest example (``>>>`` to the next blank
line) as ``pycon`` and each paragraph of command lines (``flanpipe ...``, ``python -m ...``) as
``text``, so that Markdown does not read ``[3, 1, 5]`` or ``[--threads 2]`` as links."""

from __future__ import annotations

import re

import griffe

COMMAND = re.compile(r"^\s*(flanpipe |python -m |\$ )")


def fence(text: str) -> str:
    """``text`` with its doctest examples and command paragraphs fenced (see the module docstring)."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        kind = "pycon" if line.lstrip().startswith(">>>") else "text" if COMMAND.match(line) else None
        if kind is None or (out and out[-1].strip() and kind == "text"):
            out.append(line)
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].strip():
            j += 1
        indent = len(line) - len(line.lstrip())
        block = [b[indent:] if b[:indent].strip() == "" else b for b in lines[i:j]]
        out += [" " * indent + f"```{kind}", *(" " * indent + b for b in block), " " * indent + "```"]
        i = j
    return "\n".join(out)


class DoctestFences(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence(obj.docstring.value)
