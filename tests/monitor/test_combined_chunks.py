"""Write-rate chunks combined with the throttle and the near-miss figures
(``chunk_mode = "write_rate_throttle"``, issue 30 item 6): the pure rules (hypothesis) and
the resolver."""

from __future__ import annotations

import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic import ValidationError

from autoextend.clock import ManualClock
from autoextend.monitor import policy
from autoextend.monitor.chunking import (
    MAX_MARGIN,
    NEAR_MISS_HIGH,
    NEAR_MISS_LOW,
    RateChunkParams,
    WriteRateChunks,
    combined_chunk,
    next_margin,
    rate_chunk,
)
from autoextend.monitor.config import PolicyOverride, PolicySettings
from autoextend.monitor.observer import WatermarkLeft
from autoextend.monitor.protocols import DriveInfo
from autoextend.monitor.throttle import PRESSING, hold_expiry, limit_for, steady_limit
from autoextend.volumes import VolumeRef

MiB = 1 << 20
GiB = 1 << 30
EXTENT = 4 * MiB
FAR = 1 << 50  # room to the cap that never binds


@st.composite
def params(draw: st.DrawFn) -> RateChunkParams:
    lo = draw(st.integers(1, 256)) * EXTENT
    hi = lo + draw(st.integers(0, 4096)) * EXTENT
    return RateChunkParams(lo, hi, draw(st.floats(1.0, 10.0)), 30.0, 1.0)


rates = st.floats(0, 1e11)
latencies = st.floats(0, 100)
margins = st.floats(0, 200)
fixed_chunks = st.integers(1, 1 << 36)


@given(rate=rates, latency=latencies, margin=margins, p=params(),
       utilization=st.integers(0, 99), room=st.integers(-GiB, 1 << 44), fixed=fixed_chunks)
def test_combined_chunk_never_above_the_fixed_chunk(
    rate: float, latency: float, margin: float, p: RateChunkParams, utilization: int,
    room: int, fixed: int,
) -> None:
    """The stranding bound: never a larger chunk (so never a larger watermark, nor more
    space stranded) than the fixed chunk at the same utilization; whole extents."""
    chunk = combined_chunk(rate, latency, margin, p, utilization, EXTENT, room, fixed)
    fixed_rounded = policy.round_up(fixed, EXTENT)
    assert EXTENT <= chunk <= max(EXTENT, min(p.max_chunk, fixed_rounded))
    assert chunk % EXTENT == 0
    assert policy.watermark(policy.DrivePolicy(chunk, utilization, 1.1, EXTENT)) <= \
        policy.watermark(policy.DrivePolicy(max(fixed_rounded, EXTENT), utilization, 1.1,
                                            EXTENT))


@given(rate=rates, latency=latencies, p=params(), utilization=st.integers(0, 99),
       fixed=fixed_chunks)
def test_combined_chunk_is_the_rate_chunk_below_the_ceiling(
    rate: float, latency: float, p: RateChunkParams, utilization: int, fixed: int,
) -> None:
    """Away from the cap and at the configured margin it is the write-rate chunk, cut at
    the fixed chunk: the rate rule is kept wherever it strands no more than fixed."""
    ceiling = max(EXTENT, min(p.max_chunk, policy.round_up(fixed, EXTENT)))
    plain = rate_chunk(rate, latency, p, utilization, EXTENT, FAR)
    combined = combined_chunk(rate, latency, p.margin, p, utilization, EXTENT, FAR, fixed)
    assert combined == min(max(plain, min(p.min_chunk, ceiling)), ceiling)


@given(rate=rates, latency=latencies, margins_=st.tuples(margins, margins), p=params(),
       utilization=st.integers(0, 99), fixed=fixed_chunks)
def test_combined_chunk_grows_with_the_margin(
    rate: float, latency: float, margins_: tuple[float, float], p: RateChunkParams,
    utilization: int, fixed: int,
) -> None:
    low, high = sorted(margins_)
    assert combined_chunk(rate, latency, low, p, utilization, EXTENT, FAR, fixed) <= \
        combined_chunk(rate, latency, high, p, utilization, EXTENT, FAR, fixed)


@given(margin=margins, left=st.floats(-1, 2) | st.just(math.nan), base=st.floats(1, 10))
def test_next_margin_bounds_and_direction(margin: float, left: float, base: float) -> None:
    new = next_margin(margin, left, base)
    assert base <= new <= MAX_MARGIN
    start = min(max(margin, base), MAX_MARGIN)
    if math.isnan(left) or left < NEAR_MISS_LOW:
        assert new >= start  # a near miss (or a pause) never lowers it
    elif left > NEAR_MISS_HIGH:
        assert new <= start  # a comfortable landing never raises it
    else:
        assert new == start


def test_next_margin_converges_both_ways() -> None:
    m = 2.0
    for _ in range(10):
        m = next_margin(m, 0.0, 2.0)
    assert m == MAX_MARGIN
    for _ in range(40):
        m = next_margin(m, 1.0, 2.0)
    assert m == 2.0


@given(
    rate=st.floats(1.0, 1e10), reaction=st.floats(0, 1), expected=st.floats(0.001, 300),
    fixed=st.integers(1, 4096).map(lambda n: n * EXTENT), utilization=st.integers(0, 99),
    floor=st.integers(1, 64 * MiB),
)
def test_chunk_and_throttle_together_leave_no_pause(
    rate: float, reaction: float, expected: float, fixed: int, utilization: int,
    floor: int,
) -> None:
    """The combined guarantee, as arithmetic: with the combined chunk's watermark W, a guest
    at ``rate`` writes ``rate x reaction`` before the throttle's limit is set; from then on
    it writes at most ``min(rate, limit)`` for the ``expected`` rest of the extension. When
    the watermark outlasts the reaction and the floor fits, that never exceeds W: no pause."""
    p = RateChunkParams(EXTENT, 1 << 40, 2.0, 30.0, 1.0)
    chunk = combined_chunk(rate, expected, p.margin, p, utilization, EXTENT, FAR, fixed)
    w = policy.watermark(policy.DrivePolicy(chunk, utilization, 1.1, EXTENT))
    before = rate * reaction
    if before >= w:
        return  # past what the throttle can catch: the limit is the reaction time
    free = int(w - before)
    limit = limit_for(free, rate, expected, floor)
    during = min(rate, limit) * expected if limit is not None else rate * expected
    if limit is not None and limit == floor and floor * expected > free:
        return  # the floor is above what the space allows: documented, may pause
    assert before + during <= w + 1


def _info(allocation: int, physical: int = 512 * MiB, drive: str = "vda") -> DriveInfo:
    return DriveInfo("vm1", drive, "file0", "/dev/loop9", 8 * GiB, allocation, physical)


def _combined(**kw: object) -> PolicySettings:
    base: dict[str, object] = dict(
        chunk_mib=64, utilization_percent=50, extent_mib=4, chunk_mode="write_rate_throttle",
        min_chunk_mib=8, max_chunk_mib=1024, rate_margin=2.0, assumed_latency_s=0.1)
    base.update(kw)
    return PolicySettings.model_validate(base)


def test_resolver_keeps_the_fixed_chunk_as_ceiling_and_learns_from_near_misses() -> None:
    clock = ManualClock()
    chunks = WriteRateChunks(_combined(), clock)
    vol = VolumeRef("vg", "lv")
    assert chunks.enabled and chunks.combined and chunks.sample_after_extend
    assert chunks(_info(0), vol).chunk == 64 * MiB  # no rate yet: chunk_mib
    clock.advance(1.0)
    # 50 MiB/s x 0.1 s x 2 = 10 MiB watermark -> 20 MiB chunk (plain write_rate agrees).
    assert chunks(_info(50 * MiB), vol).chunk == 20 * MiB
    # A near miss doubles the margin: 20 MiB watermark -> 40 MiB chunk.
    chunks.notify(WatermarkLeft("vm1", "vda", vol, 0.1))
    assert chunks.margins()[vol] == 4.0
    clock.advance(1.0)
    assert chunks(_info(100 * MiB), vol).chunk == 40 * MiB
    # Another: 80 MiB would be needed, but never more than the fixed 64 MiB.
    chunks.notify(WatermarkLeft("vm1", "vda", vol, 0.0))
    clock.advance(1.0)
    assert chunks(_info(150 * MiB), vol).chunk == 64 * MiB
    # A burst far past what 64 MiB covers stays at 64 MiB (the throttle's part).
    clock.advance(1.0)
    assert chunks(_info(150 * MiB + 10 * GiB), vol).chunk == 64 * MiB
    # Comfortable landings bring the margin back down.
    for _ in range(20):
        chunks.notify(WatermarkLeft("vm1", "vda", vol, 1.0))
    assert chunks.margins()[vol] == 2.0


def test_plain_write_rate_mode_ignores_near_misses_and_has_no_ceiling() -> None:
    clock = ManualClock()
    chunks = WriteRateChunks(_combined(chunk_mode="write_rate"), clock)
    vol = VolumeRef("vg", "lv")
    chunks(_info(0), vol)
    clock.advance(1.0)
    chunks.notify(WatermarkLeft("vm1", "vda", vol, 0.0))
    assert chunks.margins()[vol] == 2.0
    # 1 GiB/s x 0.1 x 2 -> 204.8 MiB watermark -> 412 MiB chunk: above chunk_mib (64).
    assert chunks(_info(GiB), vol).chunk == 412 * MiB


def test_resolver_ceiling_follows_the_overrides() -> None:
    """The ceiling is the drive's own fixed chunk: an override's chunk_mib."""
    clock = ManualClock()
    settings = _combined(overrides=(PolicyOverride(drive="vdb", chunk_mib=16),))
    chunks = WriteRateChunks(settings, clock)
    a, b = VolumeRef("vg", "a"), VolumeRef("vg", "b")
    chunks(_info(0), a)
    chunks(_info(0, drive="vdb"), b)
    clock.advance(1.0)
    assert chunks(_info(GiB), a).chunk == 64 * MiB
    assert chunks(_info(GiB, drive="vdb"), b).chunk == 16 * MiB


def test_combined_mode_needs_the_throttle() -> None:
    with pytest.raises(ValidationError, match="needs throttle = true"):
        _combined(throttle=False)
    assert _combined(chunk_mode="write_rate", throttle=False).throttle is False


def test_a_drive_seen_only_idle_keeps_the_fixed_chunk() -> None:
    """An idle rate (0 B/s) would give the smallest chunk, and the first burst only its
    watermark: in combined mode the fixed chunk stays until the drive is seen writing."""
    clock = ManualClock()
    chunks = WriteRateChunks(_combined(), clock)
    vol = VolumeRef("vg", "lv")
    chunks(_info(GiB), vol)
    for _ in range(3):
        clock.advance(10.0)
        assert chunks(_info(GiB), vol).chunk == 64 * MiB
    clock.advance(10.0)
    assert chunks(_info(GiB + 4 * MiB), vol).chunk == 8 * MiB  # 0.4 MiB/s: the minimum
    plain = WriteRateChunks(_combined(chunk_mode="write_rate"), clock)
    plain(_info(GiB), vol)
    clock.advance(10.0)
    assert plain(_info(GiB), vol).chunk == 8 * MiB  # plain write_rate: as before


@given(rate=st.floats(0, 1e11), watermark=st.integers(1, 1 << 40),
       latency=st.floats(1e-3, 300), margin=st.floats(1, MAX_MARGIN),
       floor=st.integers(1, 64 * MiB), current=st.integers(0, 1 << 34))
# Found by a clean-clone run: 99 / (0.001 x 1.1) rounds to 90000, and 90000 x 0.001 x 1.1
# is a hair over 99.
@example(rate=1.0, watermark=99, latency=0.001, margin=1.1, floor=1, current=1)
def test_steady_limit_lets_the_next_extension_land_in_the_watermark(
    rate: float, watermark: int, latency: float, margin: float, floor: int, current: int,
) -> None:
    """Held between extensions: none for a guest whose rate the watermark covers (and that
    does not press against its limit); otherwise a guest held at the limit fills at most
    the watermark in ``p99 x margin`` (unless the floor is above that: documented)."""
    limit = steady_limit(rate, watermark, latency, margin, floor, current)
    pressing = current > 0 and rate >= PRESSING * current
    needs = rate * latency * margin > watermark
    assert (limit is None) == (not needs and not pressing)
    if limit is not None:
        assert limit >= floor
        if limit > floor:
            assert limit * latency * margin <= watermark


@given(now=st.floats(0, 1e6), room=st.integers(-GiB, 1 << 40), limit=st.integers(0, 1 << 34))
def test_a_hold_outlasts_the_time_to_the_threshold_at_the_limit(
    now: float, room: int, limit: int,
) -> None:
    end = hold_expiry(now, room, limit)
    assert end >= now + 1.0
    if limit > 0:
        assert end >= now + max(0, room) / limit  # a guest still at the limit renews it
