"""Host mailbox and SPM mail server together, in one process, on in-memory storage."""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import TaskStatus
from structlog.testing import capture_logs

from autoextend.clock import ManualClock
from autoextend.errors import NotSpmError
from autoextend.lab.waiting import until
from autoextend.sectorfakes import MemoryStorage
from autoextend.spm.errors import MailboxClosed, MailboxTimeout
from autoextend.spm.host import CLEAR_DELAY_S, HostMailbox
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.server import SpmMailServer
from autoextend.spm.wire import (
    Kind,
    MalformedSlot,
    ReasonCode,
    Request,
    Ring,
    Status,
    decode_ring,
    encode_ring,
    encode_sector,
)
from autoextend.volumes import VolumeRef

from .fakes import FAST
from .pool import NO_SAFETY_NET, VG, MiB, Pool, serving, tick, vol


@pytest.mark.parametrize("sector_size", [512, 4096])
async def test_round_trip(sector_size: int) -> None:
    pool = Pool(sector_size)
    async with serving(pool, 1, 2) as (server, (h1, h2)):
        r1 = await h1.request(vol(1), 200 * MiB)
        r2 = await h2.request(vol(2), 300 * MiB)
    assert (r1.status, r1.size) == (Status.OK, 200 * MiB)
    assert (r2.status, r2.size) == (Status.OK, 300 * MiB)
    assert pool.backend.sizes[vol(1)] == 200 * MiB
    assert server.counters.received == 2 and server.counters.ok == 2
    assert h1.in_flight == 0 and h2.in_flight == 0


async def test_63_in_flight_from_one_host_all_answered_once() -> None:
    pool = Pool()
    pool.backend.delay = 0.001
    results: dict[int, Status] = {}
    async with serving(pool, 3) as (server, (host,)):
        async with anyio.create_task_group() as tg:
            for n in range(63):
                async def one(n: int = n) -> None:
                    results[n] = (await host.request(vol(n), 101 * MiB + n)).status
                tg.start_soon(one)
    assert len(results) == 63 and set(results.values()) == {Status.OK}
    assert server.counters.received == 63 and server.counters.replied == 63
    assert len(pool.backend.calls) == 63
    assert pool.backend.max_running_per_vg[VG] == 1  # serialised per VG


async def test_more_volumes_than_slots_queue_for_a_slot() -> None:
    pool = Pool()
    async with serving(pool, 1) as (_, (host,)):
        async with anyio.create_task_group() as tg:
            for n in range(80):
                tg.start_soon(host.request, vol(n), 150 * MiB)
    assert all(pool.backend.sizes[vol(n)] == 150 * MiB for n in range(80))


async def test_repeated_request_is_coalesced() -> None:
    pool = Pool()
    pool.backend.gate = anyio.Event()
    async with serving(pool, 1) as (server, (host,)):
        async with anyio.create_task_group() as tg:
            tg.start_soon(host.request, vol(1), 200 * MiB)
            await until(lambda: pool.backend.held == 1, 10, "the first request at the SPM",
                        describe=lambda: (host.counters, server.counters))
            for _ in range(4):
                tg.start_soon(host.request, vol(1), 200 * MiB)
            await until(lambda: host.counters.coalesced == 4, 10, "4 requests coalesced",
                        describe=lambda: host.counters)
            pool.backend.gate.set()
    assert host.counters.coalesced == 4 and host.counters.sent == 1
    assert server.counters.received == 1 and len(pool.backend.calls) == 1


async def test_larger_request_supersedes_the_one_in_flight() -> None:
    pool = Pool()
    pool.backend.delay = 0.05
    got: list[int] = []
    async with serving(pool, 1) as (server, (host,)):
        async with anyio.create_task_group() as tg:

            async def ask(size: int) -> None:
                got.append((await host.request(vol(1), size)).size)

            tg.start_soon(ask, 200 * MiB)
            await until(lambda: server.in_flight == 1)
            tg.start_soon(ask, 300 * MiB)
    assert host.counters.superseded == 1
    assert pool.backend.sizes[vol(1)] == 300 * MiB
    # The first waiter takes the first reply (200 MiB is enough for it) or the second.
    assert sorted(got)[-1] == 300 * MiB and all(size >= 200 * MiB for size in got)
    assert [size for _, size, changed in pool.backend.calls if changed] == [200 * MiB,
                                                                            300 * MiB]


async def test_rejections_have_reasons() -> None:
    pool = Pool()
    async with serving(pool, 1) as (server, (host,)):
        outside = await host.request(VolumeRef("othervg", "lv1"), 200 * MiB)
        bad_lv = await host.request(VolumeRef(VG, "-bad"), 200 * MiB)
        reserved = await host.request(VolumeRef(VG, "lv1_tmeta"), 200 * MiB)
        too_big = await host.request(vol(1), FAST.max_request_bytes + 1)
        missing = await host.request(VolumeRef(VG, "nosuch"), 200 * MiB)
    assert outside.status is Status.REJECTED and outside.reason is ReasonCode.VG_NOT_IN_POOL
    assert "not in the pool" in outside.text
    assert bad_lv.reason is ReasonCode.BAD_NAME and bad_lv.status is Status.REJECTED
    assert reserved.reason is ReasonCode.BAD_NAME
    assert too_big.reason is ReasonCode.SIZE_TOO_LARGE and too_big.status is Status.REJECTED
    assert missing.reason is ReasonCode.NO_SUCH_VOLUME
    assert server.counters.rejected == 5
    assert pool.backend.calls == []


async def test_vg_full_is_a_failure_reply() -> None:
    pool = Pool()
    pool.backend.capacity = sum(pool.backend.sizes.values()) + 10 * MiB
    async with serving(pool, 1) as (server, (host,)):
        reply = await host.request(vol(1), 500 * MiB)
    assert reply.status is Status.FAILED and reply.reason is ReasonCode.NO_SPACE
    assert server.counters.failed == 1


async def test_timeout_withdraws_and_a_late_spm_reply_is_ignored() -> None:
    pool = Pool()
    async with anyio.create_task_group() as tg:
        host = pool.host(1)
        await tg.start(host.run)
        with pytest.raises(MailboxTimeout):
            await host.request(vol(1), 200 * MiB, timeout_s=0.05)
        assert host.counters.timeouts == 1 and host.in_flight == 0
        await until(lambda: host.counters.withdrawn == 1)
        server = pool.server()
        await tg.start(server.run)  # nothing pending any more
        assert server.counters.received == 0
        reply = await host.request(vol(1), 200 * MiB)
        assert reply.status is Status.OK and reply.request_id == 2
        tg.cancel_scope.cancel()


async def test_pending_requests_survive_spm_failover_without_double_extends() -> None:
    pool = Pool()
    pool.backend.delay = 0.02
    results: list[Status] = []
    async with anyio.create_task_group() as tg:
        host = pool.host(1)
        await tg.start(host.run)

        async def ask(n: int) -> None:
            results.append((await host.request(vol(n), 200 * MiB)).status)

        for n in range(10):
            tg.start_soon(ask, n)
        # First SPM: serves some, then dies mid-run (cancelled, like a fenced SPM).
        with anyio.CancelScope() as first:
            old = pool.server()
            tg.start_soon(old.run)
            await until(lambda: old.counters.replied >= 3)
            first.cancel()
        served_before = old.counters.replied
        new = pool.server()
        await tg.start(new.run)
        await until(lambda: len(results) == 10)
        tg.cancel_scope.cancel()
    assert results == [Status.OK] * 10
    # Requests answered by the old SPM were not taken up again by the new one.
    assert new.counters.received <= 10 - served_before
    assert new.counters.duplicates + new.counters.received >= 10 - served_before
    changed = [v for v, _, c in pool.backend.calls if c]
    assert sorted(changed) == sorted(set(changed)) and len(changed) == 10


async def test_server_restart_does_not_execute_answered_requests_again() -> None:
    """A reply on disk whose request is still in the box (host not yet acked) is a
    duplicate for a new SPM: no second extend."""
    pool = Pool()
    layout = pool.layout
    ring = encode_ring(512, Ring(2, 7, 1, 0, (Request(5, VG, "lv1", 200 * MiB),)))
    await pool.storage.write(layout.ring_offset(2), ring)
    async with serving(pool) as (first, _):
        await until(lambda: first.counters.replied == 1)
    async with serving(pool) as (second, _):
        assert second.counters.duplicates == 1 and second.counters.received == 0
    assert len(pool.backend.calls) == 1


async def test_host_restart_starts_a_new_generation_and_ignores_stale_replies() -> None:
    pool = Pool()
    async with serving(pool, 1) as (_, (host,)):
        await host.request(vol(1), 200 * MiB)
        first_generation = host.generation
    async with serving(pool, 1) as (_, (host,)):
        assert host.generation > first_generation
        # Same slot (0) and the same request id (1) as before: only the generation differs.
        reply = await host.request(vol(1), 300 * MiB)
        assert reply.size == 300 * MiB and reply.request_id == 1
        assert reply.generation == host.generation


async def test_restart_withdraws_requests_of_the_previous_incarnation() -> None:
    pool = Pool()
    async with anyio.create_task_group() as tg:
        old = pool.host(1)
        await tg.start(old.run)
        tg.start_soon(old.request, vol(1), 200 * MiB)
        await until(lambda: old.counters.rings >= 2)
        tg.cancel_scope.cancel()
    async with anyio.create_task_group() as tg:
        await tg.start(pool.host(1).run)  # the restarted host
        server = pool.server()
        await tg.start(server.run)
        # the server has read host 1's box (the old request would be taken up there)
        await until(lambda: server.counters.boxes_read >= 1 and server.counters.polls >= 2,
                    10, "the server to read host 1's box", describe=lambda: server.counters)
        tg.cancel_scope.cancel()
    assert server.counters.received == 0 and pool.backend.calls == []


@pytest.mark.parametrize("where", ["ring", "box"])
async def test_corrupt_sector_is_skipped_counted_and_serving_goes_on(where: str) -> None:
    pool = Pool()
    async with serving(pool, 1, 2) as (server, (h1, h2)):
        await h1.request(vol(1), 200 * MiB)
        offset = pool.layout.ring_offset(1) if where == "ring" else pool.layout.request_offset(1)
        sector = bytearray(await pool.storage.read(offset, 512))
        sector[40] ^= 0xFF
        with capture_logs() as logs:
            await pool.storage.write(offset, bytes(sector))
            if where == "box":
                server._rescan.add(1)  # as the slow full scan would
            await until(lambda: server.counters.corrupt_sectors >= 1)
        event = ("corrupt ring sector (reading the box anyway)" if where == "ring"
                 else "corrupt request sector skipped")
        assert any(e["event"] == event for e in logs)
        reply = await h2.request(vol(2), 200 * MiB)
        assert reply.status is Status.OK
        # Host 1 rewrites its ring sector with its next request; it is served.
        reply = await h1.request(vol(3), 200 * MiB)
        assert reply.status is Status.OK
    assert len(pool.backend.calls) == 3


async def test_garbage_in_a_whole_box_is_never_acted_on() -> None:
    pool = Pool()
    import random

    rng = random.Random(4)
    await pool.storage.write(pool.layout.ring_offset(3), rng.randbytes(512))
    await pool.storage.write(pool.layout.request_offset(3),
                             rng.randbytes(pool.layout.request_box_bytes))
    async with serving(pool) as (server, _):
        assert server.counters.corrupt_sectors == pool.layout.request_sectors
    assert pool.backend.calls == []


class WriterLog:
    """A view of a shared storage that records which sectors its one writer wrote."""

    def __init__(self, inner: MemoryStorage) -> None:
        self.inner = inner
        self.sector_size = inner.sector_size
        self.size = inner.size
        self.path = inner.path
        self.sectors: set[int] = set()

    async def read(self, offset: int, length: int) -> bytes:
        return await self.inner.read(offset, length)

    async def write(self, offset: int, data: bytes) -> None:
        ss = self.sector_size
        self.sectors.update(range(offset // ss, (offset + len(data)) // ss))
        await self.inner.write(offset, data)

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("hot_window_s", [0.0, 60.0])
async def test_concurrent_rings_are_never_lost_and_no_sector_has_two_writers(
    hot_window_s: float,
) -> None:
    """8 hosts ring at once, again and again, with every safety net off (no re-ring, no
    slow scan): every request is still served on the first ring, through the sweep alone
    (hot window 0) or the fast path, and no sector is written by two parties."""
    settings = NO_SAFETY_NET.model_copy(update={"hot_window_s": hot_window_s})
    pool = Pool(settings=settings)
    views = {h: WriterLog(pool.storage) for h in range(1, 9)}
    spm_view = WriterLog(pool.storage)
    server = SpmMailServer(spm_view, pool.backend, [VG], layout=pool.layout,
                           authority=pool.authority, settings=settings)
    hosts = [HostMailbox(views[h], pool.layout, h, settings) for h in views]
    statuses: list[Status] = []
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        for host in hosts:
            await tg.start(host.run)
        for round_ in range(5):
            async with anyio.create_task_group() as burst:
                for host in hosts:
                    for n in range(3):

                        async def ask(host: HostMailbox = host, n: int = n,
                                      size: int = (110 + round_) * MiB) -> None:
                            lv = vol(host.host_id * 8 + n)
                            reply = await host.request(lv, size)
                            statuses.append(reply.status)

                        burst.start_soon(ask)
        tg.cancel_scope.cancel()
    assert statuses == [Status.OK] * (5 * 8 * 3)
    assert server.counters.received == 5 * 8 * 3  # each request taken up once
    # Three requests fit in the ring sector's head slots: after the start-up scan, no box
    # had to be read again except the one box write of each host's start.
    assert server.counters.boxes_read == 8 + 8
    if hot_window_s == 0.0:
        assert server.counters.hot_polls == 0 and server.counters.sweeps > 0
    else:
        assert server.counters.hot_polls > 0
    writers = [v.sectors for v in views.values()] + [spm_view.sectors]
    for i, mine in enumerate(writers):
        for other in writers[i + 1 :]:
            assert not mine & other


async def test_idle_spm_reads_only_ring_sweeps_at_the_configured_rate() -> None:
    """With nothing to do, the SPM reads the ring area (max_hosts sectors) once per
    ring_bytes / ring_sweep_bytes_per_s and nothing else; an idle host does no I/O."""
    settings = NO_SAFETY_NET.model_copy(update={
        "poll_interval_s": 0.025, "ring_sweep_bytes_per_s": 4 * 4096,
    })
    pool = Pool(settings=settings)
    assert pool.layout.ring_bytes == 4096  # 8 hosts x 512 B: one sweep every 0.25 s
    clock = ManualClock()
    server = SpmMailServer(pool.storage, pool.backend, [VG], layout=pool.layout,
                           authority=pool.authority, settings=settings, clock=clock)
    host = HostMailbox(pool.storage, pool.layout, 1, settings, clock)
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        await tg.start(host.run)
        await tick(clock, 0.5)  # the first sweep sees the host's start ring, reads its box
        assert server.counters.rings == 1 and server.counters.boxes_read == 8 + 1
        before = (pool.storage.stats.reads, pool.storage.stats.read_bytes,
                  pool.storage.stats.writes)
        await tick(clock, 10.0)
        reads = pool.storage.stats.reads - before[0]
        read_bytes = pool.storage.stats.read_bytes - before[1]
        writes = pool.storage.stats.writes - before[2]
        tg.cancel_scope.cancel()
    assert writes == 0
    assert 38 <= reads <= 41 and read_bytes == reads * 4096
    assert server.counters.hot_polls == 0


async def test_an_active_host_is_read_at_every_poll_then_cools_down() -> None:
    settings = NO_SAFETY_NET.model_copy(update={
        "poll_interval_s": 0.025, "ring_sweep_bytes_per_s": 4096, "hot_window_s": 1.0,
    })
    pool = Pool(settings=settings)
    clock = ManualClock()
    server = SpmMailServer(pool.storage, pool.backend, [VG], layout=pool.layout,
                           authority=pool.authority, settings=settings, clock=clock)
    host = HostMailbox(pool.storage, pool.layout, 3, settings, clock)

    async def step(seconds: float) -> None:
        await tick(clock, seconds)

    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        await tg.start(host.run)
        got: list[Status] = []

        async def ask() -> None:
            got.append((await host.request(vol(1), 200 * MiB)).status)

        tg.start_soon(ask)
        await step(1.1)  # the sweep (every 1 s) finds the cold host
        assert got == [Status.OK]
        polls = server.counters.hot_polls
        await step(0.5)  # active: its ring sector is read at every poll
        assert server.counters.hot_polls - polls >= 19
        await step(1.0)  # the window has passed: back to sweeps only
        polls = server.counters.hot_polls
        await step(0.5)
        assert server.counters.hot_polls == polls
        tg.cancel_scope.cancel()


async def test_no_spm_the_host_rings_again_with_backoff_then_times_out() -> None:
    """Nobody answers: the host rings again after 0.05, 0.1, 0.2, 0.2 ... s (backoff
    capped), on the injected clock, until the request times out."""
    pool = Pool()
    clock = ManualClock()
    host = HostMailbox(pool.storage, pool.layout, 1, pool.settings, clock)
    async with anyio.create_task_group() as tg:
        await tg.start(host.run)
        outcome: list[BaseException] = []

        async def ask() -> None:
            try:
                await host.request(vol(1), 200 * MiB, timeout_s=1.0)
            except MailboxTimeout as err:
                outcome.append(err)

        tg.start_soon(ask)
        await until(lambda: host.counters.rings == 2)  # start + the request
        rings_at: list[float] = []
        start = clock.now()
        while not outcome:
            before = host.counters.rings
            clock.advance(0.01)
            await anyio.sleep(0.001)  # time is the subject: backoff gaps on a stepped clock
            if host.counters.rings > before:
                rings_at.append(round(clock.now() - start, 2))
        tg.cancel_scope.cancel()
    gaps = [round(b - a, 2) for a, b in zip([0.0, *rings_at], rings_at, strict=False)]
    # Each gap is the backoff plus at most a couple of 10 ms clock steps of poll granularity.
    for gap, expected in zip(gaps, [0.05, 0.1, 0.2, 0.2, 0.2], strict=False):
        assert expected <= gap <= expected + 0.025
    assert len(gaps) >= 4
    assert host.counters.timeouts == 1 and host.counters.withdrawn == 1


async def test_not_spm_stops_the_server_without_replying() -> None:
    pool = Pool()
    pool.backend.delay = 0.1
    async with anyio.create_task_group() as tg:
        host = pool.host(1)
        await tg.start(host.run)
        server = pool.server()
        stopped = anyio.Event()

        async def serve(*, task_status: TaskStatus[None]) -> None:
            with pytest.raises(NotSpmError):
                await server.run(task_status=task_status)
            stopped.set()

        await tg.start(serve)
        tg.start_soon(host.request, vol(1), 200 * MiB)
        await until(lambda: server.in_flight == 1)
        pool.authority.valid = False
        await stopped.wait()
        assert server.in_flight == 0
        assert server.counters.replied == 0
        tg.cancel_scope.cancel()


async def test_step_down_finishes_running_and_hands_back_queued() -> None:
    pool = Pool()
    # The running extend waits at the gate, so "one running, four queued" holds until the
    # test opens it (in_flight == 5 alone says received: their tasks may not have run yet).
    gate = pool.backend.gate = anyio.Event()
    statuses: list[Status] = []
    async with anyio.create_task_group() as tg:
        host = pool.host(1)
        await tg.start(host.run)
        server = pool.server()
        await tg.start(server.run)

        async def ask(n: int) -> None:
            statuses.append((await host.request(vol(n), 200 * MiB)).status)

        for n in range(5):
            tg.start_soon(ask, n)
        await until(lambda: server.in_flight == 5 and pool.backend.held == 1)
        async with anyio.create_task_group() as stepping:
            stepping.start_soon(server.step_down)
            await until(lambda: server.counters.handed_back == 4)
            assert server.counters.replied == 0  # the running one is still at the gate
            gate.set()
        # step_down returned: the running extend finished and was answered
        assert server.counters.replied == 1 and server.counters.handed_back == 4
        await until(lambda: len(statuses) == 1)
        successor = pool.server()
        await tg.start(successor.run)
        await until(lambda: len(statuses) == 5)
        tg.cancel_scope.cancel()
    assert statuses == [Status.OK] * 5 and successor.counters.received == 4
    assert len(pool.backend.calls) == 5


async def test_request_when_not_running_raises() -> None:
    pool = Pool()
    with pytest.raises(MailboxClosed):
        await pool.host(1).request(vol(1), 1)


async def test_rejected_larger_size_does_not_fail_the_smaller_waiter() -> None:
    pool = Pool()
    pool.backend.delay = 0.05
    got: dict[int, Status] = {}
    async with serving(pool, 1) as (server, (host,)):
        async with anyio.create_task_group() as tg:

            async def ask(size: int) -> None:
                got[size] = (await host.request(vol(1), size)).status

            tg.start_soon(ask, 200 * MiB)
            await until(lambda: server.in_flight == 1)
            tg.start_soon(ask, FAST.max_request_bytes + 1)
    assert got == {200 * MiB: Status.OK, FAST.max_request_bytes + 1: Status.REJECTED}
    assert pool.backend.sizes[vol(1)] == 200 * MiB


class GatedReplies:
    """Shared storage whose reply-box writes wait for ``gate``; counts them."""

    def __init__(self, inner: MemoryStorage, layout: MailboxLayout) -> None:
        self.inner = inner
        self.layout = layout
        self.sector_size = inner.sector_size
        self.size = inner.size
        self.path = inner.path
        self.gate = anyio.Event()
        self.reply_writes: list[tuple[int, int]] = []

    async def read(self, offset: int, length: int) -> bytes:
        return await self.inner.read(offset, length)

    async def write(self, offset: int, data: bytes) -> None:
        if offset >= self.layout.reply_base:
            self.reply_writes.append((offset, len(data)))
            await self.gate.wait()
        await self.inner.write(offset, data)

    async def close(self) -> None:
        return None


async def test_replies_queued_behind_a_write_go_out_in_one_write() -> None:
    """While one reply write of a host is in progress, the other replies to that host queue;
    the next write covers all of them (one I/O for the range of its reply sectors)."""
    pool = Pool()
    gated = GatedReplies(pool.storage, pool.layout)
    server = SpmMailServer(gated, pool.backend, [VG], layout=pool.layout,
                           authority=pool.authority, settings=FAST)
    host = pool.host(2)
    statuses: list[Status] = []
    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        await tg.start(host.run)
        for n in range(63):

            async def ask(n: int = n) -> None:
                statuses.append((await host.request(vol(n), 120 * MiB)).status)

            tg.start_soon(ask)
        await until(lambda: len(pool.backend.calls) == 63 and len(gated.reply_writes) == 1)
        gated.gate.set()
        await until(lambda: len(statuses) == 63)
        tg.cancel_scope.cancel()
    assert statuses == [Status.OK] * 63
    assert len(gated.reply_writes) == 2
    _, second = gated.reply_writes
    assert second == (pool.layout.reply_offset(2), pool.layout.reply_box_bytes)


async def test_an_answered_slot_is_cleared_on_disk_lazily() -> None:
    """After the reply the slot is free at once in memory; on disk it is cleared with the
    host's next write, or CLEAR_DELAY_S later: one write less on the reply's path."""
    pool = Pool()
    clock = ManualClock()
    server = SpmMailServer(pool.storage, pool.backend, [VG], layout=pool.layout,
                           authority=pool.authority, settings=FAST, clock=clock)
    host = HostMailbox(pool.storage, pool.layout, 4, FAST, clock)

    async def head_slot_0() -> Request | MalformedSlot | None:
        raw = await pool.storage.read(pool.layout.ring_offset(4), 512)
        return decode_ring(raw, 4).slots[0]

    async with anyio.create_task_group() as tg:
        await tg.start(server.run)
        await tg.start(host.run)
        got: list[Status] = []

        async def ask() -> None:
            got.append((await host.request(vol(1), 200 * MiB)).status)

        tg.start_soon(ask)
        while not got:
            await tick(clock, 0.025, step=0.005)
        assert got == [Status.OK] and host.in_flight == 0
        assert isinstance(await head_slot_0(), Request)  # not cleared yet
        await tick(clock, CLEAR_DELAY_S + 0.01, step=0.005)
        assert await head_slot_0() is None
        tg.cancel_scope.cancel()


async def test_a_restarted_host_whose_box_seq_repeats_still_gets_its_box_read() -> None:
    """box_seq restarts with every generation: the SPM must re-read the box when the ring
    sector's generation changed even if box_seq is the same number as before."""
    pool = Pool(settings=NO_SAFETY_NET)
    layout, host = pool.layout, 5

    async def write(generation: int, box_seq: int, request: Request | None) -> None:
        box_slots: list[Request | None] = [request] + [None] * (layout.slots_per_sector - 1)
        await pool.storage.write(layout.request_offset(host), encode_sector(
            Kind.REQUEST, 512, 1, host, generation, box_slots))
        await pool.storage.write(layout.ring_offset(host), encode_ring(
            512, Ring(host, generation, 1, box_seq)))

    async with serving(pool) as (server, _):
        reads = server.counters.boxes_read
        await write(1, 3, None)  # first incarnation: an empty box
        await until(lambda: server.counters.boxes_read > reads)
        await write(2, 3, Request(9, VG, "lv1", 300 * MiB))  # restarted: same box_seq
        await until(lambda: server.counters.ok == 1)
    assert pool.backend.sizes[vol(1)] == 300 * MiB
