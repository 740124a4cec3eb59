"""Is a reload suspicious? The rule that holds back a half-written config (pure, no I/O).

A config file can be read while it is being written: an editor or a config-management tool
that writes in place leaves, for a moment, a *prefix* of the new file. Most prefixes do not
parse (a cut inside a line leaves ``chunk_mib =``, ``[polic`` or an open string) or fail the
service's rules, and are refused. The dangerous ones parse: a file cut at a line or section
boundary is valid TOML in which every later key silently falls back to its shipped default,
and a number cut inside its digits (``2560`` read as ``25``) is still a number. So a reload is
*held back* (the running config stays; the service logs what would change) when:

1. **Absence reset**: a key whose value would change *and* that the new file does not name
   (neither the key, nor, for a dict-valued key such as ``vg_reserve_mib``, the dict). The
   new value can then only be the default, taken because the key is gone, which is exactly
   what a cut at any line or section boundary does to the keys after the cut. Entries of an
   array of tables (``[[policy.overrides]]``) are keyed by their position, so a cut that
   drops the last override is an absence too.
2. **Factor**: a number under ``[policy]`` (its overrides and VG reserves included) or
   ``[resume]`` that would move up or down by more than
   ``service.reload_max_factor`` (4 by default; the *running* config's value applies, never
   the new file's). A cut inside a number's digits moves it by about
   10x or more (``2560`` -> ``256``, ``19`` -> ``1``); so does a fallback from a tuned chunk
   to the 2560 MiB default. A move to or from 0 counts as beyond any factor.

Why ordinary edits pass: an edit changes the values it touches and names them, so rule 1
never sees it; tuning moves a policy number by less than 4x at a time (chunk 1024 -> 2048,
a utilization of 20 -> 50 %). What an ordinary edit can trip is deliberate and rare: deleting
a line or a section to return to the defaults, or a big jump in one step. Those are the very
changes a truncated file is made of, so they need one confirmation: ``autoextend config
reload --confirm``, or a second SIGHUP with the same file content (a file still being written
does not stay the same). ``autoextend config check`` shows the same lines before the SIGHUP.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from autoextend.confbase import value_text
from autoextend.config import Settings

#: The sections whose numbers the factor rule watches: the policy (what a reload applies,
#: with the VG reserves, which wait for a restart) and the resume policy.
FACTOR_SECTIONS = ("policy", "resume")

#: A key as a path: section and field names, and positions in arrays of tables.
Path = tuple[str | int, ...]


def dotted(path: Path) -> str:
    """``("policy", "overrides", 1, "chunk_mib")`` -> ``policy.overrides[1].chunk_mib``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def leaves(model: BaseModel, prefix: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every setting of ``model`` as ``(path, value)``: nested sections, the entries of
    arrays of tables (by position) and of tables of values (``vg_reserve_mib``, by name) are
    walked; any other value (a number, a string, a list of plain values) is one leaf."""
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        path = (*prefix, name)
        if isinstance(value, BaseModel):
            yield from leaves(value, path)
        elif _table_array(field.annotation):
            for i, item in enumerate(value):
                yield from leaves(item, (*path, i))
        elif isinstance(value, Mapping):
            for key in sorted(value):
                yield (*path, key), value[key]
        else:
            yield path, value


def _table_array(annotation: Any) -> bool:
    """``tuple[SomeSection, ...]``: an array of tables (``[[policy.overrides]]``)."""
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    return (typing.get_origin(annotation) in (tuple, list) and len(args) == 1
            and isinstance(args[0], type) and issubclass(args[0], BaseModel))


def named(raw: Mapping[str, Any], path: Path) -> bool:
    """True when the parsed file (``raw``, the TOML mapping) names the key at ``path``."""
    node: Any = raw
    for part in path:
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return False
        elif not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


@dataclass(frozen=True)
class Change:
    key: str          # dotted
    old: Any
    new: Any
    why_held: str | None  # None: an ordinary change

    def line(self) -> str:
        """The one line the log and ``config check`` print for this change."""
        text = f"{self.key}: {value_text(self.old)} -> {value_text(self.new)}"
        return f"{text} (held: {self.why_held})" if self.why_held else text


def _is_number(value: Any) -> typing.TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def beyond_factor(old: float, new: float, factor: float) -> bool:
    """True when ``new`` is more than ``factor`` times ``old`` or less than ``old / factor``
    (a move to or from 0 is beyond every factor; no move never is)."""
    if old == new:
        return False
    if old == 0 or new == 0 or (old < 0) != (new < 0):
        return True
    ratio = abs(new / old)
    return ratio > factor or ratio < 1.0 / factor or math.isnan(ratio)


def changes(running: Settings, new: Settings, raw: Mapping[str, Any],
            factor: float) -> list[Change]:
    """Every setting that differs between ``running`` and ``new`` (the file's validated config,
    ``raw`` its parsed TOML), in path order, each marked with the rule it trips, if any.
    ``factor``: the running ``service.reload_max_factor``."""
    before = dict(leaves(running))
    after = dict(leaves(new))
    out: list[Change] = []
    for path in sorted(before.keys() | after.keys(), key=lambda p: tuple(map(str, p))):
        old, now = before.get(path), after.get(path)  # absent (a shorter array): unset
        if old == now:
            continue
        why: str | None = None
        key = dotted(path)
        if not named(raw, path):
            why = "not in the file, so the default"
        elif (path[0] in FACTOR_SECTIONS and _is_number(old) and _is_number(now)
              and beyond_factor(float(old), float(now), factor)):
            why = f"moves more than x{factor:g}"
        out.append(Change(key, old, now, why))
    return out


def held(found: list[Change]) -> list[Change]:
    """The changes that hold a reload back (empty: the reload may go ahead)."""
    return [c for c in found if c.why_held is not None]
