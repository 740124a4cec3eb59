"""SPM priority (``[lease] spm_priority``) in the deterministic simulation: the real lease
code on the simulated disk and clock.

- elections (sim/elections.py): no faults, the SPM steps down 20 times; every election is
  won by a host of the highest priority free to take the role (the 5 host whenever it has
  not just stepped down, the first election of hosts starting together included), and the
  ``never`` host never holds the role;
- with priorities and the usual seeded faults (crashes, freezes, step-downs, storage
  faults), every invariant still holds (one SPM at a time, no write after the expiry, an
  SPM within the takeover bound plus the yield) and the ``never`` host never holds a term;
- the negative control: without the yield, the first election already goes wrong.
"""

from __future__ import annotations

import pytest

import autoextend.lease.service as lease_service
from autoextend.lease.priority import Priority
from sim.config import SimConfig
from sim.elections import expected_winners
from sim.run import run_world

pytestmark = [pytest.mark.slow, pytest.mark.cpu]

ELECTIONS = 20
# Host 1, 2, ...: the 0 / 5 / never, and the same with the 5 host starting last
# beside a second 0 host (then every step-down of a 0 host is a contest of 5 against 0).
LAYOUTS: list[tuple[Priority, ...]] = [(0, 5, "never"), ("never", 0, 5, 0)]


def _elections(priorities: tuple[Priority, ...], seed: int) -> SimConfig:
    return SimConfig(seed=seed, hosts=len(priorities), duration=4000.0,
                     priorities=priorities, elections=ELECTIONS)


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("priorities", LAYOUTS, ids=lambda p: "-".join(map(str, p)))
def test_highest_free_priority_wins_every_election(
    priorities: tuple[Priority, ...], seed: int
) -> None:
    cfg = _elections(priorities, seed)
    result = run_world(cfg)
    assert result.ok, result.report()
    five = priorities.index(5) + 1
    never = priorities.index("never") + 1
    won = result.stats.elections
    assert len(won) == ELECTIONS + 1
    assert won[0] == (None, five)  # hosts starting together: the 5 host wins
    assert all(winner != never for _, winner in won)
    for stepped, winner in won:
        if stepped != five:
            assert winner == five, won
        else:  # the 5 host stays out for its hold-off: a 0 host takes the role
            assert priorities[winner - 1] == 0, won
    assert result.stats.terms == ELECTIONS + 1


@pytest.mark.parametrize("seed", [1, 2])
def test_priorities_under_faults_hold_every_invariant(seed: int) -> None:
    """The usual fault mix with 0 / 5 / never: no invariant breaks (the world fails if the
    never host ever starts a term), and the role moves around."""
    result = run_world(SimConfig(seed=seed, duration=30_000.0, priorities=(0, 5, "never")))
    assert result.ok, result.report()
    assert result.stats.terms >= 5
    assert sum(result.stats.faults.values()) > 50


def test_without_the_yield_the_low_host_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    """Negative control: with the yield window forced to 0 the election check fails."""
    monkeypatch.setattr(lease_service, "yield_window", lambda *args, **kwargs: 0.0)
    result = run_world(_elections((0, 5, "never"), 1))
    assert not result.ok
    assert result.violation is not None and "election 0: h1 (spm_priority 0) won" in \
        result.violation
    assert "--priorities 0,5,never --elections 20" in result.report()


def test_expected_winners() -> None:
    cfg = SimConfig(seed=1, hosts=4, priorities=("never", 0, 5, 0))
    assert expected_winners(cfg, None) == {3}
    assert expected_winners(cfg, 3) == {2, 4}
    assert expected_winners(cfg, 2) == {3}
    assert expected_winners(SimConfig(seed=1, hosts=1, priorities=("never",)), None) == set()
