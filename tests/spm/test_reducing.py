"""Issue 34: a reduce is exact across SPM terms, and its dry run gets the same verdict.

The checks are pure (``spm/reducing.py``); the failover tests run the real host mailbox and
SPM mail server on in-memory storage, with an SPM that dies between its lvreduce and its
reply (the case the issue found)."""

from __future__ import annotations

import anyio
from hypothesis import given
from hypothesis import strategies as st

from autoextend.clock import ManualClock, MonotonicClock
from autoextend.lab.waiting import until
from autoextend.sectorfakes import MemoryStorage
from autoextend.spm.execute import Executor
from autoextend.spm.host import HostMailbox
from autoextend.spm.reducing import (
    REDUCE_CHECKS,
    ReduceFacts,
    Verdict,
    already_applied,
    fresh_term,
    hot_volume,
    in_use_on_a_host,
    judge,
)
from autoextend.spm.server import SpmMailServer
from autoextend.spm.wire import (
    OP_EXTEND,
    OP_REDUCE,
    OP_REDUCE_CHECK,
    ReasonCode,
    Request,
    Ring,
    Status,
    encode_ring,
)
from autoextend.volumes import LocalAuthority

from .fakes import FAST, VG, VOL, ReducingBackend, layout_for

MiB = 1 << 20
sizes = st.integers(1, 1 << 40)
ages = st.floats(0.0, 1e5, allow_nan=False)


@st.composite
def facts(draw: st.DrawFn) -> ReduceFacts:
    extend_age = draw(st.none() | ages)
    return ReduceFacts(VOL, draw(sizes), draw(sizes), draw(ages), extend_age,
                       draw(st.integers(1, 250)), draw(st.floats(0.0, 3600.0)))


@given(facts())
def test_a_reduce_already_applied_is_ok_whatever_the_term_or_the_window(f: ReduceFacts) -> None:
    verdict = judge(f)
    if f.size <= f.asked:
        assert verdict is not None and verdict.status is Status.OK and verdict.size == f.size
    elif f.term_age_s < f.hot_window_s:
        assert verdict is not None and verdict.status is Status.REJECTED
        assert verdict.reason is ReasonCode.VOLUME_BUSY and "took over" in verdict.text
    elif f.extend_age_s is not None and f.extend_age_s < f.hot_window_s:
        assert verdict is not None and verdict.reason is ReasonCode.VOLUME_BUSY
    else:
        assert verdict is None  # apply it
    # Never OK for a volume still above the size asked (that would be a reduce not made).
    assert verdict is None or verdict.status is not Status.OK or f.size <= f.asked


def test_the_checks_and_their_order() -> None:
    assert REDUCE_CHECKS == (already_applied, fresh_term, hot_volume, in_use_on_a_host)


async def _verdict(executor: Executor, host: int, generation: int, req: Request) -> Verdict:
    verdict = await executor.execute(host, generation, req)
    assert verdict is not None  # nothing hands it back here
    return verdict


async def test_dry_run_gets_the_verdict_of_the_reduce_and_never_acts() -> None:
    clock = MonotonicClock()
    for hot, extended in ((3600.0, False), (0.0, True), (0.0, False)):
        backend = ReducingBackend(256 * MiB)
        desk = Executor(backend, LocalAuthority(), clock, hot_window_s=hot, max_concurrent=1)
        if extended:
            await desk.execute(3, 1, Request(9, VG, "lv1", 256 * MiB, OP_EXTEND))
        check = await _verdict(desk, 2, 1, Request(1, VG, "lv1", 100 * MiB, OP_REDUCE_CHECK))
        assert backend.reduces == []
        real = await _verdict(desk, 2, 1, Request(2, VG, "lv1", 100 * MiB, OP_REDUCE))
        assert (check.status, check.reason) == (real.status, real.reason)
        if real.status is Status.OK:
            assert check.size == real.size == 100 * MiB and backend.reduces == [(100 * MiB, True)]
            again = await _verdict(desk, 2, 1, Request(3, VG, "lv1", 100 * MiB, OP_REDUCE))
            assert again.status is Status.OK and again.size == 100 * MiB
            assert len(backend.reduces) == 1  # served twice, reduced once
        else:
            assert check.text == real.text and backend.sizes[VOL] == 256 * MiB


async def test_a_request_served_again_gets_the_verdict_it_got_before() -> None:
    """A refusal whose reply write failed may still land late; served again after the
    young-term window, the request is refused again, never applied (the simulation's find:
    seed 10 of the CI seeds)."""
    backend = ReducingBackend(256 * MiB)
    clock = ManualClock()
    desk = Executor(backend, LocalAuthority(), clock, hot_window_s=60.0, max_concurrent=1)
    request = Request(7, VG, "lv1", 100 * MiB, OP_REDUCE)
    first = await _verdict(desk, 2, 5, request)
    assert first.status is Status.REJECTED and "took over" in first.text
    clock.advance(61.0)
    assert await _verdict(desk, 2, 5, request) == first and backend.reduces == []
    other = await _verdict(desk, 2, 5, Request(8, VG, "lv1", 100 * MiB, OP_REDUCE))  # a new id
    assert other.status is Status.OK and backend.reduces == [(100 * MiB, True)]
    again = await _verdict(desk, 2, 6, Request(7, VG, "lv1", 100 * MiB, OP_REDUCE))  # new gen.
    assert again.status is Status.OK and again.size == 100 * MiB


def _server(storage: MemoryStorage, backend: ReducingBackend, hot: float,
            **kw: object) -> SpmMailServer:
    settings = FAST.model_copy(update={"hot_window_s": hot})
    return SpmMailServer(storage, backend, [VG], layout=layout_for(settings),
                         authority=LocalAuthority(), settings=settings,
                         **kw)  # type: ignore[arg-type]


async def _reduce_across_a_kill(**new_spm: object) -> tuple[Status, int, str,
                                                           ReducingBackend]:
    """The old SPM (an old term: no young-term refusal) runs lvreduce and dies before it
    replies; a new SPM (in its young term) takes the request up from the host's box."""
    layout = layout_for(FAST)
    storage = MemoryStorage(layout.end, 512)
    backend = ReducingBackend(256 * MiB)
    backend.after_apply = anyio.Event()  # never set: the old SPM dies in there
    host = HostMailbox(storage, layout, 2, FAST)
    async with anyio.create_task_group() as tg:
        await tg.start(host.run)
        replies = []

        async def ask() -> None:
            replies.append(await host.request(VOL, 100 * MiB, op=OP_REDUCE))

        tg.start_soon(ask)
        with anyio.CancelScope() as old_term:
            tg.start_soon(_server(storage, backend, 0.0).run)
            await until(lambda: backend.reduces != [], 30, "the old SPM's lvreduce")
            old_term.cancel()  # SIGKILL: no reply written
        backend.after_apply = None
        await tg.start(_server(storage, backend, 3600.0, **new_spm).run)
        await until(lambda: replies != [], 30, "the new SPM's reply")
        tg.cancel_scope.cancel()
    [reply] = replies
    return reply.status, reply.size, reply.text, backend


async def test_a_reduce_the_old_spm_applied_is_ok_from_the_new_spm() -> None:
    status, size, _, backend = await _reduce_across_a_kill()
    assert (status, size) == (Status.OK, 100 * MiB) and backend.sizes[VOL] == 100 * MiB
    assert backend.reduces == [(100 * MiB, True)]  # never reduced twice


async def test_without_the_idempotency_check_the_new_spm_would_say_no() -> None:
    """The mutation the simulation catches, here by hand: the answer is then a lie."""
    status, _, text, backend = await _reduce_across_a_kill(
        reduce_checks=(fresh_term, hot_volume))
    assert status is Status.REJECTED and "took over" in text
    assert backend.sizes[VOL] == 100 * MiB


async def test_a_reduce_answered_on_disk_is_not_served_again() -> None:
    layout = layout_for(FAST)
    storage = MemoryStorage(layout.end, 512)
    backend = ReducingBackend(256 * MiB)
    ring = encode_ring(512, Ring(2, 7, 1, 0, (Request(5, VG, "lv1", 100 * MiB, OP_REDUCE),)))
    await storage.write(layout.ring_offset(2), ring)
    first = _server(storage, backend, 0.0)
    async with anyio.create_task_group() as tg:
        await tg.start(first.run)
        await until(lambda: first.counters.replied == 1, 30, "the first SPM's reply")
        tg.cancel_scope.cancel()
    backend.sizes[VOL] = 300 * MiB  # grown since (the host has not cleared its slot yet)
    second = _server(storage, backend, 0.0)
    async with anyio.create_task_group() as tg:
        await tg.start(second.run)
        tg.cancel_scope.cancel()
    assert second.counters.duplicates == 1 and second.counters.received == 0
    assert backend.reduces == [(100 * MiB, True)] and backend.sizes[VOL] == 300 * MiB
