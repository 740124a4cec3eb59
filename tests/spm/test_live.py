"""The live sweep: ring sectors of the hosts the lease sees alive, read at the fast cadence.

``live_hosts`` may only change *when* a ring sector is read: a host it leaves out is still
served by the sweep, and a callable that raises or returns garbage cannot break the server.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from autoextend.clock import ManualClock
from autoextend.spm.config import MailboxSettings
from autoextend.spm.host import HostMailbox
from autoextend.spm.server import SpmMailServer
from autoextend.spm.watch import (
    MERGE_GAP_BYTES,
    cadence,
    idle_ring_read_rate,
    live_cover,
    live_interval,
)
from autoextend.spm.wire import Status

from .pool import NO_SAFETY_NET, VG, MiB, Pool, tick, vol

# 8 hosts x 512 B: the sweep reads the ring area once a second; the live sweep of up to
# 2 sectors runs at every poll (25 ms).
SLOW_SWEEP = NO_SAFETY_NET.model_copy(update={
    "poll_interval_s": 0.025, "ring_sweep_bytes_per_s": 4096,
    "live_sweep_bytes_per_s": 2 * 512 * 40, "hot_window_s": 60.0,
    "live_poll_interval_s": 0.025,  # the live sweep at every poll
})
DEFAULTS = MailboxSettings()


def server_for(pool: Pool, clock: ManualClock,
               live: Callable[[], Collection[int]] | None) -> SpmMailServer:
    return SpmMailServer(pool.storage, pool.backend, [VG], layout=pool.layout,
                         authority=pool.authority, settings=pool.settings, clock=clock,
                         live_hosts=live)


# Pure parts.

@given(st.sets(st.integers(-5, 2100)), st.integers(1, 2000), st.sampled_from([512, 4096]))
def test_the_live_cover_holds_every_live_host_in_few_ranges(
    live: set[int], max_hosts: int, sector_size: int
) -> None:
    cover = live_cover(live, max_hosts, sector_size)
    assert cover == sorted(set(cover))
    assert {h for h in live if 1 <= h <= max_hosts} <= set(cover)
    assert all(1 <= h <= max_hosts for h in cover)
    max_gap = MERGE_GAP_BYTES // sector_size
    for a, b in zip(cover, cover[1:], strict=False):
        assert b == a + 1 or b - a - 1 > max_gap  # gaps read, or left to the sweep
    for a, b in zip(cover, cover[1:], strict=False):
        if b == a + 1:
            continue
        assert a in live and b in live  # a range starts and ends with a live host


@given(st.sets(st.integers(1, 250)))
def test_idle_reads_never_exceed_vdsm_at_the_defaults(live: set[int]) -> None:
    """Whatever hosts are live, the SPM's idle ring reads (plus the 300 s full scan of the
    boxes) stay at or below vdsm's 518 KB/s with 250 hosts and 512 B sectors."""
    rate = idle_ring_read_rate(live, 250, 512, DEFAULTS)
    full_scan = 250 * 8192 / DEFAULTS.full_scan_interval_s
    assert rate + full_scan <= 518_000
    # the ring peeker's reads are the live sweep and the sweep; the server's own come on top
    with_peeker = idle_ring_read_rate(live, 250, 512, DEFAULTS, peeking=True)
    assert rate < with_peeker and with_peeker + full_scan <= 518_000
    assert rate <= DEFAULTS.ring_sweep_bytes_per_s + DEFAULTS.live_sweep_bytes_per_s


@given(st.integers(1, 2000).flatmap(lambda m: st.tuples(st.just(m), st.integers(0, m))),
       st.sampled_from([512, 4096]))
def test_a_live_host_is_never_read_less_often_than_by_the_sweep(
    hosts: tuple[int, int], sector_size: int
) -> None:
    max_hosts, covered = hosts
    sweep = cadence(max_hosts * sector_size, DEFAULTS.ring_sweep_bytes_per_s,
                    DEFAULTS.poll_interval_s)
    interval = live_interval(covered, sector_size, DEFAULTS, sweep)
    assert DEFAULTS.poll_interval_s <= interval <= sweep
    assert covered * sector_size / interval <= max(
        DEFAULTS.live_sweep_bytes_per_s, max_hosts * sector_size / sweep) * (1 + 1e-9)


# The server.

@pytest.mark.parametrize(("live", "fast"), [
    (lambda: {3}, True),  # a quiet live host: noticed by the live sweep
    (None, False),  # no live set: the sweep (every 1 s) finds it
    (lambda: {1, 2}, False),  # the lease does not know it: the sweep still serves it
])
async def test_first_request_of_a_quiet_host(
    live: Callable[[], Collection[int]] | None, fast: bool
) -> None:
    pool = Pool(settings=SLOW_SWEEP)
    clock = ManualClock()
    server = server_for(pool, clock, live)
    host = HostMailbox(pool.storage, pool.layout, 3, SLOW_SWEEP, clock)
    got: list[Status] = []
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        await tg.start(host.run)
        await tick(clock, 1.1)  # quiet: the start ring is seen, nothing is hot
        assert server.counters.received == 0 and server.counters.sweeps == 1
        sweeps = server.counters.sweeps

        async def ask() -> None:
            got.append((await host.request(vol(1), 200 * MiB)).status)

        tg.start_soon(ask)
        await tick(clock, 0.1)  # four polls, no sweep due
        assert server.counters.sweeps == sweeps
        assert got == ([Status.OK] if fast else [])
        await tick(clock, 1.0)  # a sweep has run
        assert got == [Status.OK]
        assert server.counters.received == 1
        tg.cancel_scope.cancel()
    if live is None:
        assert server.counters.live_polls == 0


async def test_idle_reads_follow_the_budget() -> None:
    """With hosts 1 and 2 live, the SPM reads their two ring sectors at every poll and the
    six others once a second: what :func:`idle_ring_read_rate` says, and nothing else."""
    pool = Pool(settings=SLOW_SWEEP)
    clock = ManualClock()
    server = server_for(pool, clock, lambda: [2, 1])
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        await tick(clock, 1.0)
        before = pool.storage.stats.read_bytes, pool.storage.stats.reads
        await tick(clock, 10.0)
        read_bytes = pool.storage.stats.read_bytes - before[0]
        reads = pool.storage.stats.reads - before[1]
        tg.cancel_scope.cancel()
    expected = idle_ring_read_rate({1, 2}, 8, 512, SLOW_SWEEP) * 10.0
    assert expected == 400 * 1024 + 10 * 6 * 512
    assert abs(read_bytes - expected) <= 2 * 1024 + 6 * 512  # one poll either way
    assert 395 <= reads <= 405  # a sweep poll reads all eight sectors in one I/O
    assert server.counters.live_polls >= 395 and 9 <= server.counters.sweeps <= 11


def _raises() -> Collection[int]:
    raise RuntimeError("lease not ready")


@pytest.mark.parametrize("live", [
    _raises,
    lambda: None,
    lambda: "123",
    lambda: [1.5, 2],
    lambda: [True],
    lambda: 7,
])
async def test_a_broken_live_hosts_falls_back_to_the_full_sweep(
    live: Callable[[], Collection[int]]
) -> None:
    pool = Pool(settings=SLOW_SWEEP)
    clock = ManualClock()
    server = server_for(pool, clock, live)
    host = HostMailbox(pool.storage, pool.layout, 2, SLOW_SWEEP, clock)
    got: list[Status] = []
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            await tg.start(host.run)

            async def ask() -> None:
                got.append((await host.request(vol(1), 200 * MiB)).status)

            tg.start_soon(ask)
            await tick(clock, 4.0)
            tg.cancel_scope.cancel()
    assert got == [Status.OK]
    assert server.counters.live_polls == 0 and server.counters.sweeps >= 3
    assert server.counters.live_hosts_errors >= 4  # asked about once a second
    warnings = [e for e in logs if e["event"] == "live hosts unavailable, sweeping every host"]
    assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"


async def test_out_of_range_ids_are_ignored_and_a_recovered_callable_is_used_again() -> None:
    pool = Pool(settings=SLOW_SWEEP)
    clock = ManualClock()
    answers: list[Collection[int] | Exception] = [{0, -1, 99}, RuntimeError("x"), {4}]

    def live() -> Collection[int]:
        answer = answers[0] if len(answers) == 1 else answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    server = server_for(pool, clock, live)
    with capture_logs() as logs:
        async with anyio.create_task_group() as tg:
            await tg.start(server.run)
            assert server.counters.live_hosts_errors == 0  # nothing in range: not an error
            await tick(clock, 2.5)
            tg.cancel_scope.cancel()
    assert server.counters.live_hosts_errors == 1
    assert server.counters.live_polls > 0
    events = [e["event"] for e in logs if e["event"].startswith("live hosts")]
    assert events == ["live hosts unavailable, sweeping every host",
                      "live hosts available again"]


async def test_rings_are_never_lost_through_the_live_sweep() -> None:
    """8 hosts ring at once, again and again, with every safety net off and no hot path:
    hosts 1-7 are found by the live sweep (live 1, 3, 5, 7; the small gaps are read with
    them), host 8 by the sweep, and every request is served on its first ring."""
    settings = NO_SAFETY_NET.model_copy(update={"hot_window_s": 0.0,
                                                "ring_sweep_bytes_per_s": 8 * 512 * 20})
    pool = Pool(settings=settings)
    server = SpmMailServer(pool.storage, pool.backend, [VG], layout=pool.layout,
                           authority=pool.authority, settings=settings,
                           live_hosts=lambda: {1, 3, 5, 7})
    hosts = [HostMailbox(pool.storage, pool.layout, h, settings) for h in range(1, 9)]
    statuses: list[Status] = []
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        for host in hosts:
            await tg.start(host.run)
        for round_ in range(4):
            async with anyio.create_task_group() as burst:
                for host in hosts:
                    for n in range(3):

                        async def ask(host: HostMailbox = host, n: int = n,
                                      size: int = (110 + round_) * MiB) -> None:
                            reply = await host.request(vol(host.host_id * 8 + n), size)
                            statuses.append(reply.status)

                        burst.start_soon(ask)
        tg.cancel_scope.cancel()
    assert statuses == [Status.OK] * (4 * 8 * 3)
    assert server.counters.received == 4 * 8 * 3
    assert server.counters.live_polls > 0 and server.counters.sweeps > 0
    assert server.counters.hot_polls == 0


def test_the_cluster_agent_passes_every_host_not_free_or_dead_and_itself() -> None:
    from types import SimpleNamespace

    from autoextend.cluster import ClusterAgent
    from autoextend.lease.liveness import HostState, HostStatus

    states = {h: HostStatus(h, state, f"h{h}", 1, 0.0) for h, state in enumerate(HostState, 1)}
    lease = SimpleNamespace(host_states=lambda: states)
    agent = SimpleNamespace(host_id=40)
    live = ClusterAgent._live_hosts(agent, lease)  # type: ignore[arg-type]
    assert live == {h for h, s in states.items()
                    if s.state not in (HostState.FREE, HostState.DEAD)} | {40}
    assert len(live) == len(HostState) - 2 + 1


def test_the_live_sweep_waits_live_poll_interval_at_least() -> None:
    """Two quiet live hosts are read every live_poll_interval_s (45 ms), not every 25 ms
    poll: the SPM's idle wake-ups (and CPU) follow the live set's traffic."""
    sweep = cadence(250 * 512, DEFAULTS.ring_sweep_bytes_per_s, DEFAULTS.poll_interval_s)
    assert live_interval(2, 512, DEFAULTS, sweep) == DEFAULTS.live_poll_interval_s == 0.045
    fast = DEFAULTS.model_copy(update={"live_poll_interval_s": 0.01})
    assert live_interval(2, 512, fast, sweep) == DEFAULTS.poll_interval_s
