"""SPM priority in the simulation: a world without faults whose SPM steps down again and
again (``SimConfig.elections``), with the winner of every election checked.

The rule checked (``[lease] spm_priority``, ``autoextend/lease/priority.py``): a host whose
priority is ``never`` never holds the role (``World.term_started`` checks that in every world),
and each election is won by a host of the highest priority among the hosts free to take the
role: every host that contends, except the one that just stepped down (it stays out for its
hold-off, which outlasts a lower host's yield). Each term is held longer than a hold-off, so
the host that stepped down before is back in the contest. The first election, with every
host starting at once, counts too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from autoextend.lease.priority import NEVER
from sim.config import SimConfig

if TYPE_CHECKING:
    from sim.world import World

POLL_S = 1.0  # how often the driver looks for the next term (virtual time)


def expected_winners(cfg: SimConfig, stepped_down: int | None) -> set[int]:
    """The hosts that may win: the highest priority among those free to take the role."""
    free = {h: cfg.priority(h) for h in range(1, cfg.hosts + 1)
            if h != stepped_down and cfg.priority(h) != NEVER}
    if not free:
        return set()
    top = max(int(p) for p in free.values())
    return {h for h, p in free.items() if p == top}


async def elections(world: World) -> None:
    """Wait for each term, check its winner, hold it a while, step it down; then stop."""
    cfg = world.cfg
    last_lver = 0
    stepped: int | None = None
    hold = 5 * cfg.io_timeout  # > the hold-off (4T at the default poll)
    for number in range(cfg.elections + 1):
        while True:
            valid = [(i, t) for i, t in world.valid_terms() if t.lver > last_lver]
            if valid:
                inc, term = valid[0]
                break
            await anyio.sleep(POLL_S)
        last_lver = term.lver
        world.stats.elections.append((stepped, inc.host_id))
        world.stats.checks += 1
        allowed = expected_winners(cfg, stepped)
        world.trace(f"election {number}: {inc.name} won lver {term.lver} (stepped down: "
                    f"{'-' if stepped is None else f'h{stepped}'}; expected one of "
                    f"{sorted(allowed)})")
        if inc.host_id not in allowed:
            world.fail(f"election {number}: h{inc.host_id} (spm_priority "
                       f"{cfg.priority(inc.host_id)}) won, expected one of {sorted(allowed)}")
            return
        if number == cfg.elections:
            return
        await anyio.sleep(hold)
        stepped = inc.host_id
        # A step-down is the disturbance the liveness bound counts from.
        world._fault("step-down", f"{inc.name} (election {number + 1})")
        await world._step_down(inc)
