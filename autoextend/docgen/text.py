"""Description text as blocks: paragraphs (rewrapped) and preformatted runs (kept)."""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Block:
    text: str  # a paragraph on one line, or preformatted lines
    pre: bool


def comment_blocks(text: str) -> list[Block]:
    """A comment: an indented line (two spaces or more) is preformatted."""
    out: list[Block] = []
    para: list[str] = []
    pre: list[str] = []

    def flush() -> None:
        if para:
            out.append(Block(" ".join(para), False))
            para.clear()
        if pre:
            indent = min(len(ln) - len(ln.lstrip()) for ln in pre)
            out.append(Block("\n".join(ln[indent:] for ln in pre), True))
            pre.clear()

    for line in text.splitlines():
        if not line.strip():
            flush()
        elif line.startswith("  "):
            if para:
                flush()
            pre.append(line.rstrip())
        else:
            if pre:
                flush()
            para.append(line.strip())
    flush()
    return out


def click_blocks(text: str) -> list[Block]:
    """click help: paragraphs split by blank lines; one that starts with \\b is kept as is."""
    out = []
    for chunk in re.split(r"\n\s*\n", text.strip("\n")):
        lines = chunk.splitlines()
        if lines and lines[0].strip() == "\b":
            out.append(Block("\n".join(lines[1:]), True))
        elif chunk.strip():
            out.append(Block(" ".join(chunk.split()), False))
    return out
