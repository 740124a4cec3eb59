"""autoextend.cli.errors: whatever escapes a command is one line and an exit code."""

from __future__ import annotations

import io

import click
import pytest

from autoextend.cli.errors import leaves, report
from autoextend.errors import ConfigError, StartupError


def _report(exc: BaseException, debug: bool = False) -> tuple[int, list[str]]:
    out = io.StringIO()
    code = report(exc, debug=debug, stream=out)
    return code, out.getvalue().splitlines()


def _raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - a real traceback for the debug case
        return caught


def test_nested_task_group_errors_are_unwrapped() -> None:
    inner = ExceptionGroup("tg", [StartupError("metrics endpoint 127.0.0.1:1", "address in use")])
    outer = ExceptionGroup("tg", [inner])
    assert leaves(outer) == [inner.exceptions[0]]
    code, lines = _report(_raised(outer))
    assert code == 1
    assert lines == ["autoextend: error: metrics endpoint 127.0.0.1:1: address in use"]


def test_the_config_error_wins_over_the_rest() -> None:
    group = ExceptionGroup("tg", [RuntimeError("bug"), OSError(5, "I/O error"),
                                  ExceptionGroup("tg", [ConfigError("f", [("a.b", "bad")])])])
    assert _report(group) == (2, ["autoextend: config error: f: a.b: bad"])


@pytest.mark.parametrize(
    ("exc", "code", "line"),
    [
        (OSError(98, "Address already in use"), 1, "autoextend: error: Address already in use"),
        (FileNotFoundError(2, "No such file or directory", "/x"), 1,
         "autoextend: error: No such file or directory: /x"),
        (ValueError("embedded null byte"), 1,
         "autoextend: internal error: ValueError: embedded null byte"),
        (RecursionError("maximum recursion depth exceeded"), 1,
         "autoextend: internal error: RecursionError: maximum recursion depth exceeded"),
        (KeyboardInterrupt(), 130, "aborted"),
        (click.UsageError("No such option: --x"), 2,
         "autoextend: usage error: No such option: --x (see 'autoextend --help')"),
        (StartupError("x", "two\nlines\x1b[31m"), 1, "autoextend: error: x: two lines\\x1b[31m"),
    ],
)
def test_one_line_per_kind(exc: BaseException, code: int, line: str) -> None:
    assert _report(exc) == (code, [line])
    assert _report(ExceptionGroup("g", [exc]) if isinstance(exc, Exception)
                   else BaseExceptionGroup("g", [exc])) == (code, [line])


def test_debug_prints_the_traceback_first() -> None:
    code, lines = _report(_raised(ExceptionGroup("tg", [ValueError("boom")])), debug=True)
    assert code == 1
    assert lines[0].startswith(("Traceback", "  + Exception Group Traceback"))
    assert lines[-1] == "autoextend: internal error: ValueError: boom"
