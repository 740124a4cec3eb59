"""structlog setup: JSON lines for machines, readable lines on a TTY.

Logs go to stderr so that stdout stays clean for command output (``--json`` results).
Standard keys across the code base: ``vm``, ``drive``, ``volume``, ``host_id``,
``request_id``, ``duration_s``. Each component gets its own logger with
``get_logger(component)`` and binds its context (``log.bind(vm=...)``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
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
