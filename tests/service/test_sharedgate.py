"""Local mode's look at the other hosts (``sharedgate.py``): the host states it takes from a
``pool status`` reading, judged by the SPM's rule (``spm/inuse.judge``), and what it says
without a shared area or when the area cannot be read."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from autoextend.capacity.config import CapacitySettings
from autoextend.clock import MonotonicClock
from autoextend.config import Settings
from autoextend.poolreport import combine
from autoextend.poolview import Leader, Reading, Slot, Watch
from autoextend.sharedgate import SharedAreaGate, host_states
from autoextend.spm import inuse
from tests.hypo import examples

T = {"io_timeout_s": 0.5, "watchdog_fire_timeout_s": 3.0}
NAME = "demo/vm1-disk"
# How a held slot was watched: (changed, observed_s): live; silent 2 s (< 8T + W = 7 s:
# not dead); silent 7 s (dead by this command's own watch).
WATCHED = {"live": (True, 1.5), "silent": (False, 2.0), "dead": (False, 7.0)}


def reading(slots: dict[int, tuple[str, bool]], observed: float) -> Reading:
    """``slots``: {host: (how watched, free)}."""
    watches = {h: Watch(Slot(h, bytes([h]) * 512, free, f"host-{h}", 10 + h, 0.5),
                        WATCHED[how][0], 99.0)
               for h, (how, free) in slots.items()}
    return Reading(engine="native", watches=watches, observed_s=observed,
                   leader=Leader(None, 0), records={}, vg=None, wall_us=0, now=100.0,
                   local_host=1, timeouts=T)


def record(host: int, *names: str) -> inuse.InUseRecord:
    return inuse.make_record(host, 10 + host, 5, 0, names)


def test_a_live_host_listing_the_volume_is_named() -> None:
    states = host_states(combine(reading({2: ("live", False)}, 1.5), CapacitySettings()))
    assert states == {2: ("live", 12)}
    why = inuse.judge(NAME, {2: record(2, NAME)}, states)
    assert why is not None and "in use on host 2" in why
    assert inuse.judge(NAME, {2: record(2, "demo/other")}, states) is None


def test_a_host_watched_silent_past_8t_plus_w_is_dead_and_skipped() -> None:
    states = host_states(combine(reading({3: ("dead", False)}, 7.0), CapacitySettings()))
    assert states[3][0] == "dead"
    assert inuse.judge(NAME, {3: "bad checksum"}, states) is None


@given(st.lists(st.sampled_from(["live", "silent", "free"]), min_size=1, max_size=4),
       st.sets(st.integers(1, 4)), st.sets(st.integers(1, 4)))
@settings(deadline=None, max_examples=examples(100))
def test_every_host_not_free_or_dead_must_be_fresh_and_not_list_it(
    how: list[str], listing: set[int], unreadable: set[int],
) -> None:
    """Silent is not dead (2 s < 8T + W): its record is judged like a live host's."""
    slots = {i + 1: ("live" if h == "free" else h, h == "free") for i, h in enumerate(how)}
    states = host_states(combine(reading(slots, 2.0), CapacitySettings()))
    look: dict[int, inuse.InUseRecord | None | str] = {
        h: ("bad checksum" if h in unreadable else
            record(h, NAME) if h in listing else record(h)) for h in slots}
    why = inuse.judge(NAME, look, states)
    judged = [h for h in sorted(slots) if not slots[h][1]]
    first_bad = next((h for h in judged if h in unreadable or h in listing), None)
    if first_bad is None:
        assert why is None
    else:
        assert why is not None and f"host {first_bad}" in why


async def test_without_a_shared_area_only_this_hosts_checks_count() -> None:
    gate = SharedAreaGate(Settings(), MonotonicClock())
    assert not gate.configured
    assert await gate.refusal(NAME) is None


async def test_an_area_that_cannot_be_read_refuses(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-area"
    settings = Settings.model_validate({"lease": {"path": str(missing), "io_timeout_s": 1.0}})
    why = await SharedAreaGate(settings, MonotonicClock()).refusal(NAME)
    assert why is not None and "cannot read the pool's shared area" in why
    assert str(missing) in why and "local mode" in why
