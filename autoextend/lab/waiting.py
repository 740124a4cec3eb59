"""Waiting for a condition in lab code and tests, with a clear message on timeout."""

from __future__ import annotations

from collections.abc import Callable

import anyio


async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:  # noqa: ASYNC109
    """Poll ``cond`` every 50 ms; AssertionError naming ``what`` after ``timeout`` seconds."""
    with anyio.move_on_after(timeout):
        while not cond():  # noqa: ASYNC110 (the condition lives in other tasks' state)
            await anyio.sleep(0.05)
        return
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
