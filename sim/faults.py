"""The seeded fault driver: crashes, freezes, step-downs and storage fault windows."""

from __future__ import annotations

import asyncio
import random

import anyio
from anyio.abc import TaskGroup

from autoextend.lease.service import SpmTerm
from autoextend.lease.timeouts import LeaseTimeouts
from sim.config import SimConfig, Stats
from sim.disk import SimDisk
from sim.host import Incarnation

FREEZE_AT_WRITE_PROB = 0.002  # per extend, while faults are on


class FaultDriver:
    """Mixed into World: what it needs from it is declared here."""

    cfg: SimConfig
    stats: Stats
    loop: asyncio.AbstractEventLoop
    rng_faults: random.Random
    disk: SimDisk
    timeouts: LeaseTimeouts
    current: dict[int, Incarnation]
    fault_end: float
    last_fault: float

    def trace(self, line: str) -> None: ...

    def valid_terms(self) -> list[tuple[Incarnation, SpmTerm]]:
        raise NotImplementedError

    # ---- faults ------------------------------------------------------------------------

    def _fault(self, kind: str, line: str) -> None:
        self.stats.faults[kind] = self.stats.faults.get(kind, 0) + 1
        self.last_fault = self.loop.time()
        self.trace(f"FAULT {kind} {line}")

    def spm_incarnation(self) -> Incarnation | None:
        for inc, _term in self.valid_terms():
            return inc
        return None

    def pick_host(self, prefer_spm: float) -> Incarnation:
        spm = self.spm_incarnation()
        if spm is not None and self.rng_faults.random() < prefer_spm:
            return spm
        started = sorted(self.current)  # (hosts start a few seconds apart)
        return self.current[started[self.rng_faults.randrange(len(started))]]

    async def faults(self, tg: TaskGroup) -> None:
        rng = self.rng_faults
        while True:
            await anyio.sleep(rng.expovariate(1.0 / self.cfg.fault_gap_s))
            if self.loop.time() >= self.fault_end:
                return
            if not self.current:
                continue
            roll = rng.random()
            if roll < 0.2:
                inc = self.pick_host(0.5)
                if inc.alive:
                    delay = rng.uniform(0.1, 300.0)
                    self._fault("crash", f"{inc.name} restart in {delay:.3f}")
                    inc.crash(delay)
            elif roll < 0.45:
                inc = self.pick_host(0.6)
                if inc.alive and not inc.frozen:
                    t = self.timeouts
                    span = (rng.uniform(0.0, 30.0) if rng.random() < 0.4 else
                            rng.uniform(t.lease_expiry - 2 * t.io_timeout,
                                        t.host_dead + 2 * t.io_timeout))
                    self._fault("freeze", f"{inc.name} for {span:.3f}")
                    inc.freeze()
                    tg.start_soon(self._thaw_later, inc, span)
            elif roll < 0.6:
                spm = self.spm_incarnation()
                if spm is not None and not spm.frozen and spm.tg is not None:
                    self._fault("step-down", spm.name)
                    spm.tg.start_soon(self._step_down, spm)
            else:
                host = rng.randint(1, self.cfg.hosts)
                f = self.disk.faults_for(host)
                span = rng.uniform(5.0, 200.0)
                kind = rng.choice(("io-errors", "slow-io", "torn-writes"))
                if kind == "io-errors":
                    f.error_prob = rng.uniform(0.02, 0.5)
                elif kind == "slow-io":
                    f.slow_prob = rng.uniform(0.05, 0.6)
                    f.slow_max_s = 2.5 * self.cfg.io_timeout
                else:
                    f.torn_prob = rng.uniform(0.1, 0.8)
                self._fault(kind, f"h{host} for {span:.3f}")
                tg.start_soon(self._heal_later, host, kind, span)

    def maybe_freeze_at_write(self, inc: Incarnation, term: SpmTerm) -> None:
        """The worst moment for a SIGSTOP: the SPM decided to extend and is about to write.
        Sometimes it lands there, and lasts until after the term's expiry (but usually not
        long enough for the watchdog)."""
        rng = self.rng_faults
        if (self.loop.time() >= self.fault_end or inc.frozen or inc.tg is None
                or rng.random() >= FREEZE_AT_WRITE_PROB):
            return
        span = max(0.0, term.expiry - self.loop.time()) + rng.uniform(0.0, self.cfg.watchdog)
        self._fault("freeze-at-write", f"{inc.name} for {span:.3f}")
        inc.freeze()
        inc.tg.start_soon(self._thaw_later, inc, span)

    async def _thaw_later(self, inc: Incarnation, span: float) -> None:
        await anyio.sleep(span)
        if inc.alive and inc.frozen:
            self.trace(f"{inc.name} thawed")
            self.last_fault = self.loop.time()
            inc.thaw()

    async def _heal_later(self, host: int, kind: str, span: float) -> None:
        await anyio.sleep(span)
        f = self.disk.faults_for(host)
        if kind == "io-errors":
            f.error_prob = 0.0
        elif kind == "slow-io":
            f.slow_prob = 0.0
        else:
            f.torn_prob = 0.0
        self.last_fault = self.loop.time()
        self.trace(f"h{host} {kind} healed")

    async def _step_down(self, inc: Incarnation) -> None:
        """As ``ClusterAgent.step_down``, run in the host's process."""
        lease, server = inc.lease, inc.server
        if lease is None or lease.term is None:
            return
        if server is not None:
            await server.step_down(30.0)
        await inc.gate()
        lease.step_down()
