"""benchmarks/RESULTS.md: each benchmark rewrites its own section, between its markers."""

from __future__ import annotations

from pathlib import Path


def write_section(out: Path, begin: str, end: str, lines: list[str]) -> None:
    """Replace the section of ``out`` between ``begin`` and ``end``, or append it."""
    text = out.read_text() if out.exists() else ""
    block = "\n".join([begin, *lines, end]) + "\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block
    out.write_text(text)
