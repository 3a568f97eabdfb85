"""Generated sections of a markdown page (docs/benchmarks.md): each benchmark rewrites only its own."""

from __future__ import annotations

from pathlib import Path

from ganforge.files import read_text


def write_doc_section(doc: Path, name: str, lines: list[str]) -> None:
    """Replace (or append) the generated section ``name`` of the markdown page ``doc``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = "\n".join([begin, *lines, end])
    text = read_text(doc) if doc.exists() else ""
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text += "\n" + section + "\n"
    doc.write_text(text)
