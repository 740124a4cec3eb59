"""How long multipath queues I/O once every path to a LUN is gone: read from its config.

dm-multipath keeps I/O queued while no path is left for ``no_path_retry`` checker intervals
of ``polling_interval`` seconds, then fails it (EIO). ``no_path_retry queue`` (or the
``queue_if_no_path`` feature with no ``no_path_retry``) queues forever; ``fail`` (or nothing
set) fails at once. That queueing time decides what a path loss does to a guest and to this
host's lease (``autoextend/coherence.py``).

Precedence in multipath's config: a ``multipaths`` entry (one WWID) over ``overrides`` over a
``devices`` entry (one array model) over ``defaults``. Which array model the pool's LUN is
cannot be told from the config alone, so :func:`parse` keeps every candidate and
:func:`worst` takes the longest queueing among those that can apply. The built-in hardware
table that ``multipath -t`` prints lists every vendor multipath knows; its ``devices`` are
only taken from a file the operator wrote (``source_is_builtin=False``).

The parser reads the config grammar: ``name {`` opens a section, ``}`` closes it, other
lines are ``key value`` with optional double quotes, ``#`` and ``!`` start a comment. Anything
else is a :class:`MultipathConfigError` naming the line, never a guess.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from autoextend.errors import AutoextendError

DEFAULT_POLLING_INTERVAL_S = 5.0   # multipath.conf(5)
MAX_CONFIG_BYTES = 4 << 20         # `multipath -t` prints ~100 KiB; far beyond any real file

_KEY_VALUE = re.compile(r'^([A-Za-z_][A-Za-z0-9_]*)(?:\s+(?:"([^"]*)"|(\S+)))?$')


class MultipathConfigError(AutoextendError):
    """The multipath config could not be read as multipath.conf(5) text."""


@dataclass(frozen=True)
class Queueing:
    """One place that sets queueing: where, and the no_path_retry value it gives."""

    where: str                     # "defaults", "overrides", 'device "3PARdata" "VV"', ...
    no_path_retry: str | None      # "queue", "fail" or a count; None: not set here
    queue_if_no_path: bool         # the legacy `features "1 queue_if_no_path"`

    def seconds(self, polling_interval_s: float) -> float:
        """How long I/O queues with no path (math.inf: forever)."""
        value = self.no_path_retry
        if value is None:
            return math.inf if self.queue_if_no_path else 0.0
        if value == "queue":
            return math.inf
        if value == "fail":
            return 0.0
        return int(value) * polling_interval_s

    def describe(self, polling_interval_s: float) -> str:
        value = self.no_path_retry
        if value is None:
            said = 'features "queue_if_no_path"' if self.queue_if_no_path else "no_path_retry unset"
        elif value.isdigit():
            said = f"no_path_retry {value} x polling_interval {polling_interval_s:g} s"
        else:
            said = f"no_path_retry {value}"
        return f"{said} ({self.where})"


@dataclass(frozen=True)
class MultipathConfig:
    polling_interval_s: float
    candidates: tuple[Queueing, ...]   # every place that may decide a LUN's queueing
    source: str

    def worst(self) -> Queueing:
        """The candidate that queues longest (ties: the first, in precedence order)."""
        return max(self.candidates, key=lambda q: q.seconds(self.polling_interval_s))


def _lines(text: str) -> list[tuple[int, str]]:
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.split(r"\s[#!]|^[#!]", raw, maxsplit=1)[0].strip()
        if line:
            out.append((number, line))
    return out


def _sections(text: str, source: str) -> list[tuple[str, dict[str, str]]]:
    """(path like "devices/device", its key/values) for every section, in file order."""
    stack: list[tuple[str, dict[str, str]]] = []
    done: list[tuple[str, dict[str, str]]] = []
    for number, line in _lines(text):
        if line == "}":
            if not stack:
                raise MultipathConfigError(f"{source}:{number}: '}}' closes nothing")
            done.append(stack.pop())
            continue
        opened = re.fullmatch(r"([A-Za-z_]+)\s*\{", line)
        if opened:
            parent = stack[-1][0] + "/" if stack else ""
            stack.append((parent + opened.group(1), {}))
            continue
        match = _KEY_VALUE.match(line)
        if match is None or not stack:
            raise MultipathConfigError(f"{source}:{number}: not multipath.conf syntax: {line!r}")
        stack[-1][1][match.group(1)] = match.group(2) if match.group(2) is not None else (
            match.group(3) or "")
    if stack:
        raise MultipathConfigError(f"{source}: section {stack[-1][0]!r} is never closed")
    return done


def _queueing(where: str, keys: dict[str, str], source: str) -> Queueing:
    value = keys.get("no_path_retry")
    if value is not None and not (value in ("queue", "fail") or (
            value.isdigit() and 0 < int(value) <= 1_000_000)):
        raise MultipathConfigError(
            f"{source}: {where}: no_path_retry {value!r} is not queue, fail or a count")
    features = keys.get("features", "")
    return Queueing(where, value, "queue_if_no_path" in features.split())


def _where(path: str, keys: dict[str, str]) -> str:
    name = path.rsplit("/", 1)[-1]
    if name == "device":
        return f'device "{keys.get("vendor", "?")}" "{keys.get("product", "?")}"'
    if name == "multipath":
        return f'multipath {keys.get("wwid", "?")}'
    return name


def parse(text: str, source: str, *, source_is_builtin: bool = False) -> MultipathConfig:
    """Read multipath.conf(5) text (a file, or `multipath -t` output)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise MultipathConfigError(f"{source}: over {MAX_CONFIG_BYTES} bytes: not a config")
    polling = DEFAULT_POLLING_INTERVAL_S
    defaults = Queueing("defaults", None, False)
    rest: list[Queueing] = []
    for path, keys in _sections(text, source):
        if path == "defaults":
            if "polling_interval" in keys:
                polling = _positive(keys["polling_interval"], source)
            defaults = _queueing("defaults", keys, source)
        elif path in ("overrides", "multipaths/multipath") or (
                path == "devices/device" and not source_is_builtin):
            found = _queueing(_where(path, keys), keys, source)
            if found.no_path_retry is not None or found.queue_if_no_path:
                rest.append(found)
    overrides = [q for q in rest if q.where == "overrides"]
    others = [q for q in rest if q.where != "overrides"]
    if overrides:  # overrides beat every device entry and the defaults
        others = [q for q in others if q.where.startswith("multipath ")]
        return MultipathConfig(polling, (*overrides, *others), source)
    return MultipathConfig(polling, (defaults, *others), source)


def _positive(value: str, source: str) -> float:
    if not value.isdigit() or not 0 < int(value) <= 3600:
        raise MultipathConfigError(f"{source}: polling_interval {value!r} is not 1..3600")
    return float(value)
