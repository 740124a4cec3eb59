"""Signals that come before the service can take them: queued, never fatal.

``autoextend run`` takes about 0.3 s (more on a loaded host) to import its modules and read its
config before the service's signal receiver exists. A SIGHUP's default action is to end the
process, so a reload sent in that window used to kill the service. This module imports
nothing but the standard library's ``signal``: the entry point (:mod:`autoextend.cli.entry`,
the console script and ``python -m autoextend``) imports it first, and for ``run`` installs
handlers that only *queue* the three signals. The service takes the queue over once its own
receiver is open (:func:`take_queued`) and handles the signals in order: a SIGTERM stops it
at once; SIGHUPs that came before the service was ready become one reload once it is ready.

What no program can cover is the interpreter's own start, before its first line of Python
runs (tens of ms here); under systemd (``Type=notify``) ``systemctl reload`` waits for
READY=1, so it never falls there.
"""

from __future__ import annotations

import signal
from types import FrameType

HELD = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
#: The global options that take a value (``--config F``): their value is not the command.
_VALUED = ("--config", "--log-level", "--log-format")

_queue: list[int] = []
_holding = False


def command_of(argv: list[str]) -> str | None:
    """The subcommand in ``argv`` (the first word that is neither an option nor an option's
    value), or None."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg in _VALUED:
            skip = True
            continue
        if arg.startswith("-"):
            continue
        return arg
    return None


def _queue_signal(signum: int, frame: FrameType | None) -> None:
    _queue.append(signum)


def hold() -> None:
    """Queue SIGHUP, SIGTERM and SIGINT from now on, instead of their default actions."""
    global _holding
    for signum in HELD:
        signal.signal(signum, _queue_signal)
    _holding = True


def take_queued() -> list[int]:
    """The signals queued since :func:`hold` (oldest first), and forget them. Call it once
    the service's own handlers are installed: nothing is queued after that."""
    taken = list(_queue)
    del _queue[: len(taken)]
    return taken


def holding() -> bool:
    return _holding
