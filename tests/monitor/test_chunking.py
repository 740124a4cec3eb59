"""Write-rate chunk sizing: the pure rules (hypothesis) and the resolver that samples rates."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from autoextend.clock import ManualClock
from autoextend.monitor import policy
from autoextend.monitor.chunking import (
    RateChunkParams,
    WriteRateChunks,
    next_rate,
    rate_chunk,
)
from autoextend.monitor.config import PolicySettings
from autoextend.monitor.observer import DriveGone, ExtendFinished
from autoextend.monitor.protocols import DriveInfo, OutcomeKind
from autoextend.monitor.vm import default_policy_resolver
from autoextend.volumes import VolumeRef

MiB = 1 << 20
GiB = 1 << 30
EXTENT = 4 * MiB

extents = st.integers(1, 64).map(lambda n: n * EXTENT)


@st.composite
def params(draw: st.DrawFn) -> RateChunkParams:
    lo = draw(st.integers(1, 256)) * EXTENT
    hi = lo + draw(st.integers(0, 4096)) * EXTENT
    return RateChunkParams(lo, hi, draw(st.floats(1.0, 10.0)), 30.0, 1.0)


@given(
    rate=st.floats(0, 1e12), latency=st.floats(0, 100), p=params(),
    utilization=st.integers(0, 99), room=st.integers(-GiB, 1 << 44),
)
def test_rate_chunk_bounds(
    rate: float, latency: float, p: RateChunkParams, utilization: int, room: int
) -> None:
    chunk = rate_chunk(rate, latency, p, utilization, EXTENT, room)
    assert p.min_chunk <= chunk <= p.max_chunk
    assert chunk % EXTENT == 0
    if room // EXTENT * EXTENT >= p.min_chunk:
        assert chunk <= room


@given(
    rate=st.floats(0, 1e10), latency=st.floats(0, 10), p=params(),
    utilization=st.integers(0, 99),
)
def test_rate_chunk_watermark_covers_rate_times_latency(
    rate: float, latency: float, p: RateChunkParams, utilization: int
) -> None:
    """Away from the cap, the watermark covers rate x latency x margin unless max_chunk
    stops it (then the chunk is max_chunk)."""
    chunk = rate_chunk(rate, latency, p, utilization, EXTENT, 1 << 50)
    drive = policy.DrivePolicy(chunk, utilization, 1.1, EXTENT)
    needed = rate * latency * p.margin
    assert policy.watermark(drive) + 1 >= needed or chunk == p.max_chunk


@given(
    rates=st.tuples(st.floats(0, 1e10), st.floats(0, 1e10)), latency=st.floats(0, 10),
    p=params(), utilization=st.integers(0, 99),
)
def test_rate_chunk_grows_with_rate(
    rates: tuple[float, float], latency: float, p: RateChunkParams, utilization: int
) -> None:
    slow, fast = sorted(rates)
    assert rate_chunk(slow, latency, p, utilization, EXTENT, 1 << 50) <= rate_chunk(
        fast, latency, p, utilization, EXTENT, 1 << 50)


def test_rate_chunk_examples() -> None:
    p = RateChunkParams(64 * MiB, 1024 * MiB, 2.0, 30.0, 1.0)
    # 1 GiB/s x 0.1 s x 2 = 204.8 MiB watermark; 50 % utilization -> 409.6 -> 412 MiB.
    assert rate_chunk(GiB, 0.1, p, 50, EXTENT, 1 << 40) == 412 * MiB
    assert rate_chunk(1 * MiB, 0.1, p, 50, EXTENT, 1 << 40) == 64 * MiB  # slow: min
    assert rate_chunk(100 * GiB, 1.0, p, 50, EXTENT, 1 << 40) == 1024 * MiB  # burst: max
    assert rate_chunk(GiB, 0.1, p, 50, EXTENT, 100 * MiB) == 100 * MiB  # near the cap


@given(rate=st.floats(0, 1e10), dt=st.floats(1e-3, 1e4), grown=st.integers(0, 1 << 40),
       half_life=st.floats(0.1, 1000))
def test_next_rate_between_old_and_instant(
    rate: float, dt: float, grown: int, half_life: float
) -> None:
    new = next_rate(rate, dt, grown, half_life)
    instant = grown / dt
    assert min(rate, instant) * (1 - 1e-9) <= new <= max(rate, instant) * (1 + 1e-9)
    if instant >= rate:
        assert new == instant  # a burst is believed at once


def test_next_rate_halves_after_a_half_life_of_silence() -> None:
    assert next_rate(100.0, 30.0, 0, 30.0) == 50.0


def _info(allocation: int, physical: int = 512 * MiB) -> DriveInfo:
    return DriveInfo("vm1", "vda", "file0", "/dev/loop9", 8 * GiB, allocation, physical)


def test_resolver_follows_the_rate_and_the_measured_latency() -> None:
    clock = ManualClock()
    settings = PolicySettings(chunk_mib=128, utilization_percent=50, extent_mib=4,
                              chunk_mode="write_rate", min_chunk_mib=16, max_chunk_mib=2048,
                              rate_margin=2.0, assumed_latency_s=0.5)
    chunks = WriteRateChunks(settings, clock)
    vol = VolumeRef("vg", "lv")
    assert chunks(_info(0), vol).chunk == 128 * MiB  # no rate yet: chunk_mib
    clock.advance(1.0)
    # 100 MiB/s x 0.5 s (assumed) x 2 = 100 MiB watermark -> 200 MiB chunk.
    assert chunks(_info(100 * MiB), vol).chunk == 200 * MiB
    assert chunks.chunks() == {vol: 200 * MiB}
    for _ in range(5):
        chunks.notify(ExtendFinished("vm1", "vda", vol, OutcomeKind.OK, 0, {"total": 0.05}))
    assert chunks.latency_s() == 0.05
    clock.advance(1.0)
    # Still 100 MiB/s; 0.05 s x 2 -> 10 MiB watermark -> 20 MiB chunk.
    assert chunks(_info(200 * MiB), vol).chunk == 20 * MiB
    clock.advance(600.0)
    assert chunks(_info(200 * MiB), vol).chunk == 16 * MiB  # quiet: the minimum


def test_fixed_mode_reports_the_fixed_chunk() -> None:
    clock = ManualClock()
    chunks = WriteRateChunks(PolicySettings(chunk_mib=128, extent_mib=4), clock)
    vol = VolumeRef("vg", "lv")
    chunks(_info(0), vol)
    clock.advance(1.0)
    assert chunks(_info(GiB), vol).chunk == 128 * MiB
    assert chunks.chunks() == {vol: 128 * MiB}
    chunks.notify(DriveGone("vm1", "vda", vol))
    assert chunks.chunks() == {}


def test_only_write_rate_mode_asks_for_a_sample_after_extend() -> None:
    """The monitor reads ``policy_for.sample_after_extend`` (on every resolver, no probe):
    the chunk resolver says yes only in write_rate mode (also after a reload); the config's
    resolver never does."""
    chunks = WriteRateChunks(PolicySettings(chunk_mib=128, extent_mib=4), ManualClock())
    assert not chunks.sample_after_extend
    chunks.reconfigure(PolicySettings(chunk_mib=128, extent_mib=4, chunk_mode="write_rate"))
    assert chunks.sample_after_extend
    assert not default_policy_resolver(PolicySettings()).sample_after_extend
