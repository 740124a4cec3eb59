"""``autoextend spm drill``: a planned SPM failover under the current load, measured.

Operators cannot pull a cable to learn whether their timeouts fit their storage. The drill
moves the SPM role the clean way (``spm step-down``: requests in flight finish or are handed
back, the lease is released) and measures what a failover costs on this pool, now:

- **takeover**: from the release to the leader record naming the next SPM (a higher lease
  version), read fresh from the storage (or the sanlock daemon) every :data:`POLL_S`; the
  reads change nothing in the contest (``LeaseEngine.read_spm``);
- **requests**: those the old SPM handed back to the next one, and this host's extensions that
  ended during the drill (count, failures, the slowest);
- **pauses**: this host's VMs paused for lack of space during the drill.

Next to the measure it prints what an *unclean* failover (the SPM host dies or freezes)
costs with the configured timeouts (``autoextend/timeouts.py``, ``lease/timeouts.py``): no
other host may take the lease before ``8 T + W`` after the dead SPM's last renewal, and
requests are served again within ``failover_s = 8 T + W + 2 T``. Only this host's extensions
and pauses are seen here; the other hosts' are in their own ``status``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol

import anyio

from autoextend.clock import Clock
from autoextend.errors import AutoextendError
from autoextend.lease.engine import LeaseEngine
from autoextend.logs import get_logger
from autoextend.monitor.observer import Tally
from autoextend.timeouts import failover_s

log = get_logger("drill")

POLL_S = 0.02   # leader reads while waiting for the takeover: one sector each


class DrillError(AutoextendError):
    pass


class Steppable(Protocol):
    """The cluster agent as the drill uses it."""

    @property
    def host_id(self) -> int: ...

    @property
    def lease(self) -> LeaseEngine | None: ...

    async def step_down(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """End this host's SPM term cleanly; the reply's ``handed_back`` counts the requests
        left for the next SPM."""
        ...


@dataclass(frozen=True)
class DrillReport:
    host_id: int
    old_lver: int
    new_spm: int | None            # None: nobody took it within the bound
    new_lver: int | None
    takeover_s: float | None
    handed_back: int
    extends: int                   # this host's extensions that ended during the drill
    failed: int
    slowest_extend_s: float | None
    enospc_pauses: int
    io_timeout_s: float
    watchdog_fire_timeout_s: float
    unclean_takeover_s: float      # 8 T + W: the earliest another host may take the lease
    unclean_failover_s: float      # 8 T + W + 2 T: requests served again

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def lines(self) -> list[str]:
        t, w = self.io_timeout_s, self.watchdog_fire_timeout_s
        if self.new_spm is None:
            took = (f"nobody took the SPM role within {self.unclean_failover_s:g} s: check the "
                    "other hosts (`autoextend spm status`)")
        else:
            who = "this host again" if self.new_spm == self.host_id else f"host {self.new_spm}"
            took = (f"{who} took the SPM role (lver {self.new_lver}) {self.takeover_s:.3f} s "
                    "after the release")
        slowest = ("" if self.slowest_extend_s is None
                   else f", slowest {self.slowest_extend_s:.3f} s")
        return [
            f"SPM drill: host {self.host_id} stepped down from lver {self.old_lver}",
            f"  takeover: {took}",
            f"  requests handed back to the next SPM: {self.handed_back}",
            f"  this host's extensions during the drill: {self.extends} ended, "
            f"{self.failed} failed{slowest}",
            f"  this host's ENOSPC pauses during the drill: {self.enospc_pauses}",
            f"  an unclean failover (the SPM host dies) with T = {t:g} s, W = {w:g} s: no host "
            f"may take over before 8T + W = {self.unclean_takeover_s:g} s after its last "
            f"renewal; requests are served again within 8T + W + 2T = "
            f"{self.unclean_failover_s:g} s",
        ]


async def drill(cluster: Steppable, tally: Tally, clock: Clock,
                step_down_timeout_s: float = 30.0) -> DrillReport:
    """Step down and measure (see the module docstring). Run it on the SPM host."""
    lease = cluster.lease
    if lease is None:
        raise DrillError("this host has not joined the pool yet")
    term = lease.term
    if term is None:
        holder = lease.current_spm()
        where = f"host {holder[0]} is" if holder else "no host is known to be"
        raise DrillError(f"this host (host {cluster.host_id}) is not the SPM ({where}): run "
                         "the drill on the SPM host")
    old_lver = term.lver
    timeouts = lease.timeouts
    bound = failover_s(timeouts.io_timeout, timeouts.watchdog_fire)
    extends0, failed0, pauses0 = len(tally.latencies), tally.failed, tally.enospc_pauses
    log.info("SPM drill: stepping down", host_id=cluster.host_id, lver=old_lver)
    stepped = await cluster.step_down(step_down_timeout_s)
    released = clock.now()
    handed_back = int(stepped.get("handed_back", 0))
    taken = await _wait_for_takeover(lease, old_lver, released, bound, clock)
    took_s = None if taken is None else taken[2] - released
    latencies = tally.latencies[extends0:]
    report = DrillReport(
        host_id=cluster.host_id, old_lver=old_lver,
        new_spm=None if taken is None else taken[0],
        new_lver=None if taken is None else taken[1], takeover_s=took_s,
        handed_back=handed_back, extends=len(latencies), failed=tally.failed - failed0,
        slowest_extend_s=max(latencies) if latencies else None,
        enospc_pauses=tally.enospc_pauses - pauses0,
        io_timeout_s=timeouts.io_timeout, watchdog_fire_timeout_s=timeouts.watchdog_fire,
        unclean_takeover_s=timeouts.takeover_min, unclean_failover_s=bound)
    log.info("SPM drill done", host_id=cluster.host_id, new_spm=report.new_spm,
             takeover_s=took_s, handed_back=handed_back)
    return report


async def _wait_for_takeover(lease: LeaseEngine, old_lver: int, since: float, bound: float,
                             clock: Clock) -> tuple[int, int, float] | None:
    """(host, lver, when) of the first leader read past ``old_lver``; None after ``bound``."""
    failures = 0
    while clock.now() - since < bound:
        try:
            holder = await lease.read_spm()
        except (AutoextendError, OSError) as err:
            failures += 1
            if failures == 1:
                log.warning("SPM drill: a leader read failed (retrying)", error=str(err))
            holder = None
        if holder is not None and holder[1] > old_lver:
            return holder[0], holder[1], clock.now()
        await anyio.sleep(POLL_S)
    return None
