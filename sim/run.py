"""Run one world and report: ``run_world(SimConfig(seed=...))``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog

from sim import vloop
from sim.config import SimConfig, Stats
from sim.world import World


@dataclass
class Result:
    cfg: SimConfig
    violation: str | None
    digest: str
    sim_seconds: float
    real_seconds: float
    stats: Stats
    disk: dict[str, int]
    lines: int
    tail: list[str]

    @property
    def ok(self) -> bool:
        return self.violation is None

    def summary(self) -> str:
        s = self.stats
        faults = sum(s.faults.values())
        return (f"seed {self.cfg.seed}: {self.sim_seconds:.0f} sim s in {self.real_seconds:.1f} s, "
                f"{s.requests} requests ({s.answered} ok, {s.rejected} rejected, "
                f"{s.timeouts} timed out; {s.reduces} reduces: {s.reduced} applied, "
                f"{s.reduce_refused} refused; {s.claims} claims, {s.claims_refused} refused),"
                f" {s.terms} SPM terms, {s.changes} changes, "
                f"{faults} faults, {s.watchdog_kills} watchdog resets; {s.vm_starts} VM starts "
                f"({s.stale_starts} on a stale view), {s.migrations} migrations, "
                f"{s.guest_reads} guest reads; {s.checks} checks, "
                f"trace {self.digest[:12]}")

    def report(self, tail: int = 60) -> str:
        lines = [f"VIOLATION: {self.violation}", f"trace tail ({tail} of {self.lines} lines):"]
        lines += self.tail[-tail:]
        lines.append(f"replay: {self.cfg.command()}")
        return "\n".join(lines)


def _quiet_logs() -> dict[str, Any]:
    """Silence structlog for the run; returns the config to restore afterwards.

    No logger caching: a module-level logger cached while the run's filter is on would keep
    that filter after the run (and hide the logs of whatever runs next in the process)."""
    import logging

    saved = structlog.get_config()
    structlog.configure(
        processors=[],
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        cache_logger_on_first_use=False,
    )
    return saved


def run_world(cfg: SimConfig) -> Result:
    """Run one deterministic world to its end or to its first violation."""
    saved_logging = _quiet_logs()
    started = time.perf_counter()
    box: dict[str, World] = {}

    async def main() -> None:
        world = World(cfg)
        box["world"] = world
        await world.main()

    try:
        vloop.run(main)
    except (vloop.Livelock, vloop.Deadlock) as err:
        box["world"].trace(f"VIOLATION {type(err).__name__}: {err}", last=True)
        box["world"].violation = box["world"].violation or f"{type(err).__name__}: {err}"
    finally:
        structlog.configure(**saved_logging)
    world = box["world"]
    return Result(cfg, world.violation, world.digest, world.loop.time() - vloop.START,
                  time.perf_counter() - started, world.stats, dict(vars(world.disk.stats)),
                  world.lines, list(world.tail))
