"""The CLI's one error path: whatever escapes a command becomes one line and an exit code.

=====================================  ====  ==================================================
what escaped                           exit  line
=====================================  ====  ==================================================
ConfigError (file, key, CLI argument)  2     ``autoextend: config error: FILE: key: problem``
click usage error                      2     ``autoextend: usage error: ... (see --help)``
StartupError, other AutoextendError    1     ``autoextend: error: what: reason``
OSError from anywhere                  1     ``autoextend: error: strerror: filename``
anything else (a bug)                  1     ``autoextend: internal error: Type: message``
Ctrl-C                                 130   ``aborted``
=====================================  ====  ==================================================

anyio task groups wrap what their tasks raise in (nested) ``ExceptionGroup``s; they are
unwrapped to their leaves first, and the most telling leaf is reported: a config error before
an environment error before a bug. The traceback is printed (before the line) only when the
log level is debug.
"""

from __future__ import annotations

import sys
import traceback
from typing import TextIO

import click

from autoextend.errors import AutoextendError, ConfigError, one_line

PROG = "autoextend"


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, in order; ``exc`` itself otherwise."""
    out: list[BaseException] = []
    stack = [exc]
    while stack:
        item = stack.pop()
        if isinstance(item, BaseExceptionGroup):
            stack.extend(reversed(item.exceptions))
        else:
            out.append(item)
    return out


def _rank(exc: BaseException) -> int:
    if isinstance(exc, KeyboardInterrupt):
        return 0
    if isinstance(exc, ConfigError | click.ClickException):
        return 1
    if isinstance(exc, AutoextendError):
        return 2
    if isinstance(exc, OSError):
        return 3
    return 4


def describe(exc: BaseException) -> tuple[int, str]:
    """(exit code, the one line) for ``exc`` (a leaf, not a group)."""
    if isinstance(exc, KeyboardInterrupt | click.exceptions.Abort):
        return 130, "aborted"
    if isinstance(exc, click.UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else PROG
        return exc.exit_code, f"{PROG}: usage error: {exc.format_message()}" \
                              f" (see '{where} --help')"
    if isinstance(exc, click.ClickException):
        return exc.exit_code, f"{PROG}: error: {exc.format_message()}"
    if isinstance(exc, ConfigError):
        return 2, f"{PROG}: config error: {exc}"
    if isinstance(exc, AutoextendError):
        return 1, f"{PROG}: error: {exc}"
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        where = f": {exc.filename}" if exc.filename is not None else ""
        return 1, f"{PROG}: error: {reason}{where}"
    return 1, f"{PROG}: internal error: {type(exc).__name__}: {exc}"


def report(exc: BaseException, *, debug: bool, stream: TextIO | None = None) -> int:
    """Print ``exc`` as one line (after its traceback when ``debug``); return the exit code."""
    out = stream if stream is not None else sys.stderr
    found = leaves(exc)
    leaf = min(found, key=_rank) if found else exc
    if debug and not isinstance(leaf, click.ClickException | click.exceptions.Abort):
        traceback.print_exception(exc, file=out)
    code, line = describe(leaf)
    print(one_line(line), file=out, flush=True)
    return code
