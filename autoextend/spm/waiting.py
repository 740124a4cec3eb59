"""Waiting on an injected clock or an event, whichever comes first."""

from __future__ import annotations

import math

import anyio

from autoextend.clock import Clock, MonotonicClock


async def sleep_or_event(clock: Clock, seconds: float | None, event: anyio.Event) -> None:
    """Return when ``event`` is set or ``seconds`` passed on ``clock`` (None: no limit)."""
    if event.is_set():
        return
    if isinstance(clock, MonotonicClock):
        # The real clock: a cancel scope's deadline is the same wait without a task spawned
        # per call (an idle SPM waits here a few times a second).
        with anyio.move_on_after(seconds if seconds is not None else math.inf):
            await event.wait()
        return
    async with anyio.create_task_group() as tg:

        async def sleeper(limit: float) -> None:
            await clock.sleep(limit)
            tg.cancel_scope.cancel()

        if seconds is not None:
            tg.start_soon(sleeper, seconds)
        await event.wait()
        tg.cancel_scope.cancel()
