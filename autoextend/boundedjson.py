"""JSON from an untrusted peer, parsed with a bound on nesting depth.

``json.loads`` recurses once per nesting level: a few thousand levels of ``[[[[...`` raise
``RecursionError`` (or, rendered later by a logger, exhaust the stack elsewhere). Nothing
autoextend reads (control requests, QMP replies, lvm2 reports) is deeper than a dozen levels,
so input deeper than :data:`DEFAULT_MAX_DEPTH` is refused before it is parsed.
"""

from __future__ import annotations

import json
import re
from typing import Any

DEFAULT_MAX_DEPTH = 64

# A JSON string: brackets inside it are not structure. An unterminated string runs to the end
# of the input (the parser rejects it later); without that, the search would restart at every
# escaped quote inside it and take quadratic time. Possessive: no backtracking either.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\Z)', re.DOTALL)
_BRACKET = re.compile(rb"[][{}]")


class TooDeep(ValueError):
    """The document nests deeper than allowed (a ValueError, like any unparsable input)."""


def nesting_depth(data: bytes) -> int:
    """The deepest nesting of arrays/objects in ``data`` (0 for a scalar).

    Linear; cheap for the usual case: the depth cannot exceed the number of opening brackets.
    Unbalanced input gives some depth; the parser rejects it afterwards anyway.
    """
    depth = deepest = 0
    for m in _BRACKET.finditer(_STRING.sub(b'""', data)):
        if m.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(depth - 1, 0)
    return deepest


def check_depth(data: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
    """Raise :class:`TooDeep` if ``data`` nests deeper than ``max_depth``."""
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return
    depth = nesting_depth(data)
    if depth > max_depth:
        raise TooDeep(f"JSON nested {depth} deep (at most {max_depth} allowed)")


def loads(data: bytes | str, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """``json.loads`` that raises ValueError (never RecursionError) for too-deep input."""
    raw = data.encode("utf-8", errors="surrogatepass") if isinstance(data, str) else data
    check_depth(raw, max_depth)
    try:
        return json.loads(raw)
    except RecursionError:  # pragma: no cover - check_depth runs first
        raise TooDeep("JSON nested too deep") from None
