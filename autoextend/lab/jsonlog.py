"""Reading a JSON-lines log that a live process is still writing.

A reader that races the writer can see the last line half written: structlog writes a
record with one ``write``, but a read may land between two pages of it, and a process
killed mid-write leaves a torn line that the next process appends after. So only complete
lines (ending in a newline) are records, and a line that does not decode (a torn one, or a
line some library printed that is not JSON) is skipped, not raised: the caller asks "has
event X been logged yet", and a line still in flight is simply not there yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def json_records(path: Path) -> list[dict[str, Any]]:
    """The JSON object records of ``path``'s complete lines (none if it does not exist)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return []
    return parse_records(text)


def parse_records(text: str) -> list[dict[str, Any]]:
    """The JSON object records of ``text``'s complete lines (see the module doc)."""
    out: list[dict[str, Any]] = []
    lines = text.split("\n")
    for line in lines[:-1]:  # the last piece has no newline yet: still being written
        if not line.startswith("{"):
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
