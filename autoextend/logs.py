"""structlog setup: JSON lines for machines, readable lines on a TTY.

Logs go to stderr so that stdout stays clean for command output (``--json`` results).
Standard keys across the code base: ``vm``, ``drive``, ``volume``, ``host_id``,
``request_id``, ``duration_s``. Each component gets its own logger with
``get_logger(component)`` and binds its context (``log.bind(vm=...)``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal, TextIO, cast

import structlog
from structlog.typing import FilteringBoundLogger

LogFormat = Literal["auto", "json", "console"]
LEVELS = ("debug", "info", "warning", "error")

STANDARD_KEYS = ("vm", "drive", "volume", "host_id", "request_id", "duration_s")


def _round_durations(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    value = event.get("duration_s")
    if isinstance(value, float):
        event["duration_s"] = round(value, 6)
    return event


def configure(level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None) -> None:
    """Configure structlog once for the process. Safe to call again (e.g. on SIGHUP)."""
    out = stream if stream is not None else sys.stderr
    if fmt == "auto":
        fmt = "console" if out.isatty() else "json"
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=out.isatty())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _round_durations,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if fmt == "json" else _identity,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def _identity(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    return event


Logger = FilteringBoundLogger


def get_logger(component: str, **context: Any) -> Logger:
    """A logger for one component, with ``component`` and any extra context bound.

    Typed as structlog's :class:`FilteringBoundLogger` protocol (``debug``/``info``/...,
    ``bind``), the wrapper :func:`configure` installs."""
    # A lazy proxy: it assembles the logger from the configuration current at each call, so
    # module-level loggers follow a later ``configure()``.
    return cast(Logger, structlog.get_logger(component=component, **context))


class Repeats:
    """Repeated warnings of one cause: the first is logged, the rest are counted.

    A *cause* is the event text of one call site ("host id rejoin failed"); its errors may
    differ in detail (an offset) and are counted together. The first report of a cause is
    logged at its level (and again once if it escalates, say from warning to error); later
    reports go to debug with ``repeats=N``. When the cause is over (:meth:`clear`, called on
    the next success) one info line says how often it came: ``repeated warning cleared`` with
    ``warning``, ``repeats``, ``last_error`` and (with a clock) ``duration_s``. With a clock,
    a cause that lasts logs ``repeated warning continues`` with the count every
    ``remind_s``, at its level. This is the rule of the lease's bad records (each one logged
    once) applied to retries, so an outage of any length logs a few lines, not one per retry.
    """

    def __init__(self, log: Logger, now: Callable[[], float] | None = None,
                 remind_s: float = 600.0) -> None:
        self._log = log
        self._now = now
        self._remind_s = remind_s
        self._causes: dict[str, _Cause] = {}

    def warning(self, event: str, **kw: Any) -> None:
        self.report("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self.report("error", event, **kw)

    def report(self, level: str, event: str, **kw: Any) -> None:
        now = self._now() if self._now is not None else 0.0
        cause = self._causes.get(event)
        if cause is None:
            self._causes[event] = _Cause(now, now, {level}, kw.get("error"))
            getattr(self._log, level)(event, **kw)
            return
        cause.repeats += 1
        if "error" in kw:
            cause.last_error = kw["error"]
        if level not in cause.levels:
            cause.levels.add(level)
            getattr(self._log, level)(event, repeats=cause.repeats, **kw)
        elif self._now is not None and now - cause.reminded >= self._remind_s:
            cause.reminded = now
            getattr(self._log, level)("repeated warning continues", warning=event,
                                      repeats=cause.repeats, duration_s=now - cause.since,
                                      last_error=cause.last_error)
        else:
            self._log.debug(event, repeats=cause.repeats, **kw)

    def clear(self, event: str, reason: str = "it worked again") -> None:
        """The cause of ``event`` is over: one line with its count if it came more than once."""
        cause = self._causes.pop(event, None)
        if cause is None or cause.repeats == 1:
            return
        timing = {"duration_s": self._now() - cause.since} if self._now is not None else {}
        self._log.info("repeated warning cleared", warning=event, repeats=cause.repeats,
                       last_error=cause.last_error, reason=reason, **timing)

    def clear_all(self, reason: str = "stopped") -> None:
        """Every cause is over (its owner stops): the count line of each that repeated."""
        for event in list(self._causes):
            self.clear(event, reason)

    def active(self, event: str) -> int:
        """How often ``event`` came since its cause began (0: not now)."""
        cause = self._causes.get(event)
        return cause.repeats if cause is not None else 0


@dataclass
class _Cause:
    since: float
    reminded: float
    levels: set[str]
    last_error: Any
    repeats: int = 1
