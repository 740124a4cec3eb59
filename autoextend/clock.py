"""Time as a dependency: a Clock protocol, the monotonic clock, and a manual clock for tests.

Everything that waits or measures (leases, backoff, polling) takes a Clock, so tests can drive
time without monkeypatching.
"""

from __future__ import annotations

import time
from typing import Protocol

import anyio


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic clock (never jumps back, not wall time)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class MonotonicClock:
    """The real clock: ``time.monotonic`` and ``anyio.sleep``."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that moves only when a test calls :meth:`advance`.

    Sleepers wake when the time they wait for has been reached.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._changed = anyio.Event()

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        deadline = self._now + max(0.0, seconds)
        while self._now < deadline:
            await self._changed.wait()

    def advance(self, seconds: float) -> None:
        self._now += seconds
        changed, self._changed = self._changed, anyio.Event()
        changed.set()
