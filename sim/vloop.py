"""A virtual-time asyncio event loop: time jumps to the next timer whenever nothing is ready.

``loop.time()`` is virtual, so everything that waits on the loop's clock (``anyio.sleep``,
``fail_after``, ``move_on_after``, asyncio timers) runs in simulated time, as fast as the CPU
allows. There is no I/O polling: the selector never blocks, it only moves the clock. Nothing
here reads the wall clock.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

_T = TypeVar("_T")

START = 1000.0  # virtual seconds at start (away from 0 so no timestamp is ever 0)


class Deadlock(RuntimeError):
    """Every task waits for something no timer will ever bring."""


class Livelock(RuntimeError):
    """The loop kept running callbacks without time ever advancing (a busy loop)."""


SPIN_LIMIT = 200_000  # loop iterations at one instant before it counts as a livelock


class _TimeSelector(selectors.SelectSelector):
    """Registers file descriptors like a real selector but never polls them: ``select`` moves
    the loop's virtual clock to the next timer instead of sleeping."""

    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None
        self.spins = 0
        self.failed = False

    def select(self, timeout: float | None = None) -> list[Any]:
        loop = self.loop
        assert loop is not None
        if self.failed:  # reported once; the loop is being shut down (tasks cancelled)
            timeout = timeout or 0.0
        elif timeout is None:
            self.failed = True
            raise Deadlock("no task is ready and no timer is scheduled")
        elif timeout == 0:
            self.spins += 1
            if self.spins > SPIN_LIMIT:
                self.failed = True
                raise Livelock(f"{SPIN_LIMIT} loop iterations at t={loop._vtime:.6f}")
            return []
        self.spins = 0
        if timeout > 0:
            scheduled = loop._scheduled  # type: ignore[attr-defined]
            target = scheduled[0]._when if scheduled else loop._vtime + timeout
            loop._vtime = max(loop._vtime, target)
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        selector = _TimeSelector()
        self._vtime = START
        super().__init__(selector)
        selector.loop = self
        # Timers due within this are run together (it must stay above the float spacing of
        # the virtual time, or a timer due "now" would never be run).
        self._clock_resolution = 1e-6

    def time(self) -> float:
        return self._vtime


def run(func: Callable[[], Awaitable[_T]]) -> _T:
    """Run ``func`` under anyio on a fresh virtual-time loop."""
    return anyio.run(func, backend="asyncio", backend_options={"loop_factory": VirtualTimeLoop})
