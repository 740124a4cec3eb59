"""The capacity math (pure): levels, the moving rate, headroom, the reduce target."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from autoextend.capacity.figures import (
    Level,
    Levels,
    headroom_seconds,
    level_of,
    overcommit_ratio,
    reduce_target,
    update_rate,
)

MiB = 1 << 20
sizes = st.integers(min_value=0, max_value=1 << 50)


def test_levels_at_80_percent_used() -> None:
    levels = Levels(20.0, 64 * MiB)
    size = 512 * MiB
    assert level_of(size, 103 * MiB, levels) is Level.OK
    assert level_of(size, 102 * MiB, levels) is Level.WARNING  # 80.1 % used
    assert level_of(size, 63 * MiB, levels) is Level.CRITICAL
    assert level_of(size, 0, Levels(0.0, 0)) is Level.OK  # both off
    assert level_of(0, 0, Levels(20.0, 0)) is Level.OK  # unknown size


@given(sizes, sizes, st.floats(0, 99.9), st.integers(0, 1 << 40))
def test_level_is_monotone_in_free(size: int, free: int, warn: float, critical: int) -> None:
    levels = Levels(warn, critical)
    order = [Level.CRITICAL, Level.WARNING, Level.OK]
    assert order.index(level_of(size, free, levels)) <= order.index(
        level_of(size, free + MiB, levels))


@given(st.floats(0, 1e12), sizes, sizes, st.floats(0.001, 1e4), st.floats(0.1, 1e5))
def test_rate_stays_between_old_rate_and_instant(
    rate: float, before: int, now: int, dt: float, window: float
) -> None:
    new = update_rate(rate, before, now, dt, window)
    instant = max(0, before - now) / dt
    assert new >= 0.0
    assert min(rate, instant) - 1e-6 * max(rate, instant, 1) <= new
    assert new <= max(rate, instant) + 1e-6 * max(rate, instant, 1)


def test_rate_ignores_space_coming_back_and_converges() -> None:
    assert update_rate(0.0, 100, 200, 1.0, 10.0) == 0.0
    rate = 0.0
    for _ in range(200):  # 1 MiB/s for 200 s, window 10 s
        rate = update_rate(rate, 2 * MiB, MiB, 1.0, 10.0)
    assert abs(rate - MiB) < 1.0
    assert update_rate(5.0, 0, 0, 0.0, 10.0) == 5.0


@given(sizes, st.floats(0, 1e12))
def test_headroom(free: int, rate: float) -> None:
    h = headroom_seconds(free, rate)
    assert h >= 0.0
    if rate == 0.0:
        assert math.isinf(h)
    else:
        assert headroom_seconds(free + MiB, rate) >= h


def test_overcommit_ratio() -> None:
    assert overcommit_ratio(3 * MiB, 2 * MiB) == 1.5
    assert overcommit_ratio(5, 0) == 0.0


def test_reduce_target_example() -> None:
    # 100 MiB written into a 256 MiB volume, chunk 64 MiB, extent 4 MiB: 101 MiB end -> 168
    assert reduce_target(101 * MiB, 256 * MiB, 64 * MiB, 4 * MiB, leaf=True) == 168 * MiB
    assert reduce_target(101 * MiB, 256 * MiB, 64 * MiB, 4 * MiB, leaf=False) == 104 * MiB
    assert reduce_target(300 * MiB, 256 * MiB, 64 * MiB, 4 * MiB, leaf=True) == 256 * MiB


@given(sizes, sizes, st.integers(1, 1 << 34), st.integers(1, 1 << 30), st.booleans())
def test_reduce_target_bounds(end: int, current: int, chunk: int, extent: int,
                              leaf: bool) -> None:
    target = reduce_target(end, current, chunk, extent, leaf=leaf)
    assert target <= current  # never grows
    if target < current:  # a real reduce: whole extents, never below the image end
        assert target % extent == 0
        assert target >= end + (chunk if leaf else 0)
