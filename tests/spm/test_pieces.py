"""The mailbox ends' pieces on their own (issue 26): the host's slot states, a request in
flight and its waiters, and the SPM's one op path (its turns and its one error ladder)."""

from __future__ import annotations

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoextend.clock import ManualClock
from autoextend.errors import NotSpmError
from autoextend.lab.waiting import until
from autoextend.spm.execute import Executor
from autoextend.spm.pending import Pending, Waiter
from autoextend.spm.reducing import Verdict
from autoextend.spm.slots import CLEAR_DELAY_S, SlotState, SlotTable
from autoextend.spm.wire import (
    OP_EXTEND,
    OP_REDUCE,
    OP_REDUCE_CHECK,
    ReasonCode,
    Reply,
    Request,
    Status,
)
from autoextend.volumes import VolumeNotFound, VolumeRef

from .fakes import Authority, BrokenBackendError, RecordingBackend, layout_for

MiB = 1 << 20
VOL = VolumeRef("vg0", "lv1")

# ---- the host's slots -------------------------------------------------------------------------


def test_a_slot_goes_free_sent_answered_free_and_is_cleared_with_the_next_write() -> None:
    layout = layout_for()
    table = SlotTable(layout)
    table.reset()
    table.take_dirty()
    request = Request(1, "vg0", "lv1", MiB)
    table.send(0, request)
    assert table.state(0) is SlotState.SENT and table.image(0)[0] == request
    assert table.take_dirty() == ({0}, True) and 0 not in table.free()
    table.answer(0, now=10.0)
    assert table.state(0) is SlotState.ANSWERED and 0 in table.free()
    assert table.image(0)[0] is None and table.dirty == set()  # no write for the answer
    assert table.clear_wait(10.5) == CLEAR_DELAY_S - 0.5
    table.clear_answered(10.5)  # nothing else to write, not due yet: stays answered
    assert table.state(0) is SlotState.ANSWERED
    table.clear_answered(10.0 + CLEAR_DELAY_S)
    assert table.state(0) is SlotState.FREE and table.take_dirty() == ({0}, False)
    assert table.clear_wait(20.0) is None


def test_an_answered_slot_rides_along_with_another_write_and_a_withdrawal_does_not_ring() -> None:
    layout = layout_for()
    table = SlotTable(layout)
    last = layout.request_slot_sector(layout.slots_per_sector * 2)
    table.send(0, Request(1, "vg0", "a", MiB))
    table.send(layout.slots_per_sector * 2, Request(2, "vg0", "b", MiB))
    table.take_dirty()
    table.answer(0, now=0.0)
    table.withdraw(layout.slots_per_sector * 2)
    table.clear_answered(0.0)  # a write is due anyway: the answered slot is cleared with it
    assert table.state(0) is SlotState.FREE
    assert table.take_dirty() == ({0, last}, False)
    table.put_back({3}, True)  # a failed flush puts back what it took
    assert table.take_dirty() == ({3}, True)


SLOT_OPS = st.lists(st.tuples(st.sampled_from(["send", "withdraw", "answer", "clear", "flush",
                                               "fail"]),
                               st.integers(0, 9), st.floats(0.0, 3.0)), max_size=60)


@given(SLOT_OPS)
def test_the_disk_differs_from_the_slots_only_in_answered_slots(ops: list[tuple[str, int,
                                                                             float]]) -> None:
    """Whatever happens, a sector not marked dirty holds on disk what the slots hold, except
    answered slots (cleared lazily, and harmless: the SPM answered them already); a sent slot
    and only a sent slot holds a request."""
    layout = layout_for()
    table = SlotTable(layout)
    table.reset()
    disk: dict[int, list[Request | None]] = {i: table.image(i)
                                             for i in range(layout.request_sectors)}
    now, next_id = 0.0, 1
    for op, slot, dt in ops:
        now += dt
        state = table.state(slot)
        if op == "send":
            table.send(slot, Request(next_id, "vg0", f"lv{slot}", MiB))
            next_id += 1
        elif op == "withdraw" and state is SlotState.SENT:
            table.withdraw(slot)
        elif op == "answer" and state is SlotState.SENT:
            table.answer(slot, now)
        elif op == "clear":
            table.clear_answered(now)
        elif op in ("flush", "fail"):
            dirty, ring = table.take_dirty()
            if op == "fail":
                table.put_back(dirty, ring)
            else:
                disk.update({i: table.image(i) for i in dirty})
        for i in range(layout.request_sectors):
            slots = layout.request_sector_slots(i)
            for j, held, on_disk in zip(slots, table.image(i), disk[i], strict=True):
                assert (held is not None) == (table.state(j) is SlotState.SENT)
                if i not in table.dirty and table.state(j) is not SlotState.ANSWERED:
                    assert on_disk == held
    table.clear_answered(now + CLEAR_DELAY_S)
    assert SlotState.ANSWERED not in [table.state(j) for j in range(10)]


# ---- a request in flight and its waiters --------------------------------------------------------


def _reply(request_id: int, status: Status, size: int) -> Reply:
    return Reply(request_id, 1, status, size if status is Status.OK else 0)


@given(st.lists(st.integers(1, 8), min_size=1, max_size=6),
       st.sampled_from([Status.OK, Status.FAILED, Status.REJECTED]), st.integers(1, 8))
def test_who_a_reply_answers(sizes: list[int], status: Status, reported: int) -> None:
    """A reply to the current id answers every waiter, except that a failure leaves the
    smaller ones to be asked for again; an OK to an earlier id answers those it covers;
    nobody is answered twice or left out without a re-ask."""
    pending = Pending(VOL, sizes[0], 1, 0.0)
    for size in sizes:
        if size > pending.size:
            pending.reissue(pending.request_id + 1, size, 0.0)
        pending.waiters.append(Waiter(size, 1e9))
    current, top = pending.request_id, pending.size
    done, again = pending.answered_by(_reply(current, status, top))
    if status is Status.OK or all(w.size >= top for w in pending.waiters):
        assert done == pending.waiters and again is None
    else:
        assert {w.size for w in done} <= {top}
        assert again == max(w.size for w in pending.waiters if w.size < top)
    for old, old_size in pending.earlier.items():
        done, again = pending.answered_by(_reply(old, status, max(old_size, reported)))
        expect = ([w for w in pending.waiters if w.size <= max(old_size, reported)]
                  if status is Status.OK else [])
        assert done == expect and again is None
    assert pending.answered_by(_reply(current + 1, Status.OK, top)) == ([], None)


async def test_finishing_a_waiter_wakes_it_with_its_reply() -> None:
    pending = Pending(VOL, MiB, 1, 0.0)
    first, second = Waiter(MiB, 5.0), Waiter(MiB, 50.0)
    pending.waiters += [first, second]
    assert pending.expired(10.0) == [first]
    reply = _reply(1, Status.OK, MiB)
    pending.finish([first])  # timed out: no reply
    pending.finish([second], reply)
    assert first.done.is_set() and first.reply is None
    assert second.done.is_set() and second.reply is reply and pending.waiters == []
    assert pending.request() == Request(1, "vg0", "lv1", MiB, OP_EXTEND)


# ---- the SPM's one op path --------------------------------------------------------------------


def _executor(backend: RecordingBackend, authority: Authority | None = None,
              hot: float = 0.0) -> Executor:
    return Executor(backend, authority or Authority(), ManualClock(), hot_window_s=hot,
                    max_concurrent=4)


async def test_every_op_gets_the_same_verdict_for_the_same_error() -> None:
    """One ladder: a missing volume, a backend error and a backend bug give an extend and a
    reduce the same status and reason."""
    cases = [(VolumeNotFound("vg0/lv1"), Status.REJECTED, ReasonCode.NO_SUCH_VOLUME),
             (BrokenBackendError("lvm said no"), Status.FAILED, ReasonCode.VOLUME_ERROR),
             (RuntimeError("a bug"), Status.FAILED, ReasonCode.INTERNAL)]
    for error, status, reason in cases:
        backend = RecordingBackend({VOL: 256 * MiB})
        backend.raise_on_extend = error

        async def broken(volume: VolumeRef, error: Exception = error) -> int:
            raise error

        backend.metadata_size = broken  # type: ignore[method-assign]  # the reduce's first read
        executor = _executor(backend)
        verdicts = [await executor.execute(2, 1, Request(n, "vg0", "lv1", 100 * MiB, op))
                    for n, op in enumerate((OP_EXTEND, OP_REDUCE, OP_REDUCE_CHECK), 1)]
        assert [(v.status, v.reason) for v in verdicts if v is not None] == [(status, reason)] * 3


async def test_a_reduce_error_is_remembered_an_extend_error_is_not() -> None:
    backend = RecordingBackend({VOL: 256 * MiB})
    backend.raise_on_extend = BrokenBackendError("lvm said no")
    executor = _executor(backend)
    reduce = Request(7, "vg0", "lv1", 100 * MiB, OP_REDUCE)
    first = await executor.execute(2, 1, reduce)
    assert first is not None and first.status is Status.FAILED  # the fake cannot reduce
    assert await executor.execute(2, 1, reduce) == first
    extend = Request(8, "vg0", "lv1", 300 * MiB)
    failed = await executor.execute(2, 1, extend)
    assert failed is not None and failed.reason is ReasonCode.VOLUME_ERROR
    backend.raise_on_extend = None
    again = await executor.execute(2, 1, extend)  # run again: to at least size
    assert again is not None and again.status is Status.OK and again.size == 300 * MiB


async def test_the_term_check_comes_before_the_change_and_a_lost_term_is_raised() -> None:
    backend = RecordingBackend({VOL: 256 * MiB})
    authority = Authority()
    executor = _executor(backend, authority)
    check = await executor.execute(2, 1, Request(1, "vg0", "lv1", 100 * MiB, OP_REDUCE_CHECK))
    assert check is not None and check.text == "would reduce"  # judging changes nothing
    authority.valid = False
    for op, size in ((OP_EXTEND, 300 * MiB), (OP_REDUCE, 100 * MiB)):
        with pytest.raises(NotSpmError):  # raised, never answered
            await executor.execute(2, 1, Request(2 + op, "vg0", "lv1", size, op))
    assert backend.calls == [] and backend.sizes[VOL] == 256 * MiB


async def test_hand_back_cancels_only_what_waits_for_its_turn() -> None:
    backend = RecordingBackend({VOL: 256 * MiB, VolumeRef("vg0", "lv2"): 256 * MiB})
    backend.gate = anyio.Event()
    executor = _executor(backend)
    verdicts: dict[str, object] = {}

    async def ask(lv: str) -> None:
        verdicts[lv] = await executor.execute(2, 1, Request(len(verdicts) + 1, "vg0", lv,
                                                            300 * MiB))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "lv1")
        await until(lambda: backend.held == 1)
        tg.start_soon(ask, "lv2")  # same VG: waits for the VG's lock
        await anyio.wait_all_tasks_blocked()  # it waits at the lock
        executor.hand_back()
        await until(lambda: "lv2" in verdicts)
        backend.gate.set()
    assert verdicts["lv2"] is None  # handed back, never run
    first = verdicts["lv1"]
    assert isinstance(first, Verdict) and first.status is Status.OK  # ran to its verdict
    assert backend.calls == [(VOL, 300 * MiB, True)]
    assert backend.max_running_per_vg["vg0"] == 1
