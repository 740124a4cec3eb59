"""JSON from an untrusted peer, parsed with a bound on nesting depth.

``json.loads`` recurses once per nesting level: a few thousand levels of ``[[[[...`` raise
``RecursionError`` (or, rendered later by a logger, exhaust the stack elsewhere). Nothing
autoextend reads (control requests, QMP replies, lvm2 reports) is deeper than a dozen levels,
so input deeper than :data:`DEFAULT_MAX_DEPTH` is refused before it is parsed.
"""

from __future__ import annotations

import itertools
import json
import operator
import re
from collections.abc import Iterator
from typing import Any

DEFAULT_MAX_DEPTH = 64

# A JSON string: brackets inside it are not structure. An unterminated string runs to the end
# of the input (the parser rejects it later); without that, the search would restart at every
# escaped quote inside it and take quadratic time. Possessive: no backtracking either.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*+(?:"|\Z)', re.DOTALL)
_BRACKETS = b"[]{}"
_NOT_BRACKET = bytes(b for b in range(256) if b not in _BRACKETS)
# opening bracket -> 2, closing -> 0 (see _depths)
_STEP = bytes.maketrans(_BRACKETS, b"\x02\x00\x02\x00")


class TooDeep(ValueError):
    """The document nests deeper than allowed (a ValueError, like any unparsable input)."""


def _depths(data: bytes) -> Iterator[int]:
    """The nesting depth after each bracket of ``data`` (outside strings), lazily.

    Every step runs in C (no Python code per byte), so the cost is a few tens of nanoseconds
    per bracket: strings are blanked and every byte but a bracket deleted by the regex engine
    and ``bytes.translate``; an opening bracket becomes 2 and a closing one 0, so the depth
    after the i-th bracket (from 1) is the running sum minus i. Excess closing brackets are
    not clamped: such input is invalid JSON, which the parser rejects at the first excess
    bracket, before it has recursed deeper than this count says.
    """
    steps = _STRING.sub(b'""', data).translate(_STEP, _NOT_BRACKET)
    return map(operator.sub, itertools.accumulate(steps), itertools.count(1))


def nesting_depth(data: bytes) -> int:
    """The deepest nesting of arrays/objects in ``data`` (0 for a scalar).

    Linear, in C (see :func:`_depths`). Unbalanced input gives some depth; the parser rejects
    it afterwards anyway.
    """
    return max(itertools.chain((0,), _depths(data)))


def check_depth(data: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> None:
    """Raise :class:`TooDeep` if ``data`` nests deeper than ``max_depth``.

    Stops at the first bracket past ``max_depth``: a line of 100,000 opening brackets (a
    hostile peer's) costs a regex pass and a translate over the line, and 513 steps, not a
    walk of every bracket on the event loop.
    """
    if data.count(b"[") + data.count(b"{") <= max_depth:
        return
    if next(itertools.dropwhile(max_depth.__ge__, _depths(data)), None) is not None:
        raise TooDeep(f"JSON nested deeper than {max_depth} levels")


def loads(data: bytes | str, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """``json.loads`` that raises ValueError (never RecursionError) for too-deep input."""
    raw = data.encode("utf-8", errors="surrogatepass") if isinstance(data, str) else data
    check_depth(raw, max_depth)
    try:
        return json.loads(raw)
    except RecursionError:  # pragma: no cover - check_depth runs first
        raise TooDeep("JSON nested too deep") from None
