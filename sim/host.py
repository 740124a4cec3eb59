"""A simulated host process: its incarnation (alive, frozen), its clock and its watchdog."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import anyio
from anyio.abc import TaskGroup

from autoextend.lease.service import LeaseService
from autoextend.spm.inusepub import InUsePublisher
from autoextend.spm.server import SpmMailServer

if TYPE_CHECKING:
    from sim.world import World


class Incarnation:
    """One run of one host's process: its memory dies with it."""

    def __init__(self, world: World, host_id: int, number: int) -> None:
        self.world = world
        self.host_id = host_id
        self.number = number
        self.alive = True
        self.frozen = False
        self._thaw = anyio.Event()
        self.scope = anyio.CancelScope()
        self.lease: LeaseService | None = None
        self.server: SpmMailServer | None = None
        self.publisher: InUsePublisher | None = None
        self.tg: TaskGroup | None = None
        self.armed: float | None = None      # watchdog deadline (term expiry)
        self.restart_after = 1.0             # a process that exits is restarted (systemd)
        self.name = f"h{host_id}.{number}"

    async def gate(self) -> None:
        """Where a frozen (SIGSTOPped) process stops: every sleep and every I/O passes here."""
        while self.frozen and self.alive:
            await self._thaw.wait()

    def freeze(self) -> None:
        if not self.frozen:
            self.frozen = True
            self._thaw = anyio.Event()

    def thaw(self) -> None:
        self.frozen = False
        self._thaw.set()

    def crash(self, restart_after: float) -> None:
        self.alive = False
        self.armed = None
        self.restart_after = restart_after
        self.thaw()
        self.scope.cancel()


class SimClock:
    """The injected clock of one incarnation: virtual time; sleeps stop while frozen."""

    def __init__(self, loop: asyncio.AbstractEventLoop, inc: Incarnation) -> None:
        self._loop = loop
        self._inc = inc

    def now(self) -> float:
        return self._loop.time()

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(max(0.0, seconds))
        if self._inc.frozen:
            await self._inc.gate()


class SimWatchdog:
    """The watchdog device: once a term's expiry passes while still armed, the host is reset
    at some instant within W after it (a frozen process cannot disarm it)."""

    def __init__(self, world: World, inc: Incarnation) -> None:
        self.world = world
        self.inc = inc

    def update(self, expiry: float | None) -> None:
        self.inc.armed = expiry
        if expiry is not None:
            fire = expiry + self.world.rng_faults.random() * 0.99 * self.world.cfg.watchdog
            self.world.loop.call_at(fire, self.world.watchdog_fire, self.inc, expiry)
