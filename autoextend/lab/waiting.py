"""Waiting for a condition in lab code and tests, with a clear message on timeout.

:func:`until` is THE polling helper of the lab and the test suite: a deadline, a poll that
starts at 1 ms (a condition set by another task is seen at once) and backs off to 50 ms (a slow
one costs no CPU), and a failure message that names what was awaited and the last state seen.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import anyio

MIN_POLL_S = 0.001
MAX_POLL_S = 0.05


async def until(
    cond: Callable[[], object] | Callable[[], Awaitable[object]],
    timeout: float = 10.0,  # noqa: ASYNC109 (the deadline is the helper's point)
    what: str = "the condition",
    *,
    describe: Callable[[], object] | None = None,
) -> None:
    """Poll ``cond`` until it is true; AssertionError after ``timeout`` seconds. ``cond`` may
    be a coroutine function (a condition that asks QEMU, for example).

    The message names ``what`` and, when ``describe`` is given, what it returns at the
    deadline (the last observed state: sizes, states, counters)."""
    poll = MIN_POLL_S
    with anyio.move_on_after(timeout):
        while True:
            result = cond()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await anyio.sleep(poll)
            poll = min(poll * 2, MAX_POLL_S)
    message = f"timed out after {timeout} s waiting for {what}"
    if describe is not None:
        try:
            state = describe()
        except Exception as exc:  # the message must not hide the timeout
            state = f"<describe failed: {exc!r}>"
        message += f"; last observed: {state!r}"
    raise AssertionError(message)
