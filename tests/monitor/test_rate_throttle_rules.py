"""The write rate, the headroom and the throttle's rules: pure functions, with hypothesis."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.monitor.protocols import IO_LIMIT_FIELDS, IoLimits
from autoextend.monitor.rate import (
    MIN_SAMPLE_GAP_S,
    Sample,
    free_above_threshold,
    headroom_s,
    update,
)
from autoextend.monitor.throttle import (
    FAILOVER_SLACK,
    MIN_REMAINING_S,
    OVERDUE,
    SPM_FAILOVER,
    WRITE_RATE,
    describe,
    expect,
    limit_for,
    tighter,
)

MiB = 1 << 20
sizes = st.integers(0, 1 << 44)
times = st.floats(0.0, 1e6, allow_nan=False)
gaps = st.floats(MIN_SAMPLE_GAP_S * 1.01, 3600.0, allow_nan=False)  # float rounding of t
rates = st.just(0.0) | st.floats(1e-3, 1e10, allow_nan=False)


@given(t=times, a=sizes, dt=gaps, grown=sizes, half=st.floats(0.1, 600.0))
def test_a_rate_is_never_negative_and_rises_at_once(t: float, a: int, dt: float, grown: int,
                                                     half: float) -> None:
    first = update(None, t, a, half)
    assert first == Sample(t, a, 0.0)
    second = update(first, t + dt, a + grown, half)
    assert second.rate == pytest.approx(grown / dt)  # from 0 it rises at once
    third = update(second, t + 2 * dt, a + grown, half)  # nothing written
    assert 0.0 <= third.rate <= second.rate


@given(t=times, a=sizes, dt=st.floats(0.0, MIN_SAMPLE_GAP_S / 2), grown=sizes)
def test_a_sample_too_close_is_no_rate(t: float, a: int, dt: float, grown: int) -> None:
    first = update(None, t, a, 30.0)
    assert update(first, t + dt, a + grown, 30.0) is first


@given(t=times, a=st.integers(1, 1 << 44), dt=gaps, less=st.integers(1, 1 << 20))
def test_a_smaller_allocation_starts_over(t: float, a: int, dt: float, less: int) -> None:
    first = update(update(None, t, a, 30.0), t + dt, a + MiB, 30.0)
    assert update(first, t + 2 * dt, max(0, a - less), 30.0).rate == 0.0


@given(allocation=sizes, physical=sizes, watermark=st.integers(1, 1 << 40), rate=rates)
def test_free_above_threshold_and_headroom(allocation: int, physical: int, watermark: int,
                                           rate: float) -> None:
    free = free_above_threshold(allocation, physical, watermark)
    assert 0 <= free <= watermark
    assert free <= max(0, physical - allocation)
    h = headroom_s(free, rate)
    assert h >= 0
    assert math.isinf(h) == (rate <= 0)


@given(elapsed=st.floats(0.0, 1e4), p99=st.floats(0.001, 1e3), failover=st.floats(1.0, 1e4),
       spm=st.booleans(), react=st.floats(0.0, 10.0))
def test_the_expected_rest_of_an_extension(elapsed: float, p99: float, failover: float,
                                           spm: bool, react: float) -> None:
    e = expect(elapsed, p99, failover, spm, react)
    assert e.remaining_s > 0
    if elapsed < p99:
        assert e.reason == WRITE_RATE
        # the rest of the p99, and the throttle's reaction on top
        assert e.remaining_s == pytest.approx(p99 - elapsed + react)
    else:
        assert e.reason == (OVERDUE if spm else SPM_FAILOVER)
        # overdue: a failover (with slack) then an ordinary extension, never below the least
        assert e.remaining_s == max(FAILOVER_SLACK * failover + p99 - elapsed + react,
                                    MIN_REMAINING_S)
        assert e.remaining_s >= min(failover + p99 - elapsed + react, MIN_REMAINING_S)


@given(free=st.integers(0, 1 << 40), rate=rates, remaining=st.floats(0.01, 1e4),
       floor=st.integers(1, 1 << 30), act=st.floats(0.0, 10.0))
def test_a_limit_makes_the_headroom_last_or_sits_at_the_floor(
        free: int, rate: float, remaining: float, floor: int, act: float) -> None:
    limit = limit_for(free, rate, remaining, floor, act)
    if headroom_s(free, rate) >= remaining:
        assert limit is None  # the headroom lasts as it is
        return
    assert limit is not None and limit >= floor
    if limit > floor:
        assert limit < rate  # it slows the guest
        # The guest writes at its rate until the limit is in place (act, at most half the
        # rest), then at the limit: the space lasts until the extension lands.
        a = min(act, remaining / 2)
        assert rate * a + limit * (remaining - a) <= free * (1 + 1e-9)


@given(current=st.integers(0, 1 << 40), wanted=st.none() | st.integers(1, 1 << 40))
def test_a_limit_is_only_ever_tightened(current: int, wanted: int | None) -> None:
    new = tighter(current, wanted)
    if new is not None:
        assert new == wanted
        assert current == 0 or new < current


limit_maps = st.dictionaries(st.sampled_from(IO_LIMIT_FIELDS), st.integers(0, 1 << 40))


@given(fields=limit_maps, group=st.sampled_from(["", "g1"]), bps=st.integers(1, 1 << 40))
def test_a_write_limit_never_raises_a_limit_and_keeps_the_rest(
        fields: dict[str, int], group: str, bps: int) -> None:
    before = IoLimits.of(fields, group)
    after = before.with_write_bps(bps)
    assert 0 < after.write_bps <= bps
    if before.write_bps:
        assert after.write_bps <= before.write_bps
    assert after.group == group
    assert not (after.get("bps") and after.get("bps_wr") and not before.get("bps_wr"))
    changed = {k for k in IO_LIMIT_FIELDS if after.get(k) != before.get(k)}
    assert changed <= {"bps", "bps_wr", "bps_max", "bps_max_length", "bps_wr_max",
                       "bps_wr_max_length"}


def test_bad_limits_are_refused_with_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown I/O limit fields"):
        IoLimits.of({"bps_write": 1})
    with pytest.raises(ValueError, match=">= 0"):
        IoLimits.of({"bps": -1})
    with pytest.raises(ValueError, match="> 0"):
        IoLimits().with_write_bps(0)


def test_the_status_text() -> None:
    assert describe(int(12.8 * MiB), SPM_FAILOVER) == "THROTTLED 12 MiB/s (SPM failover)"
    assert describe(512 * 1024, WRITE_RATE) == "THROTTLED 512 KiB/s (write rate)"
