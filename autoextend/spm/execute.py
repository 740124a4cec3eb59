"""One request on the SPM: wait for its turn, run its op, turn every outcome into a verdict.

Every op (extend, reduce, reduce check) takes the same path, :meth:`Executor.execute`: a
slot of the limiter (at most ``max_concurrent_extends`` ops at once, across VGs), the VG's
lock, then :meth:`Executor._execute`, which runs the op and turns every exception into a
verdict with one ladder. ``authority.check()`` runs right before the backend's change
(``extend`` here, ``reduce`` in ``reducing.py``), and the backend checks it again before
every lvm2 command (``lvm/writer.py``).

Per-VG serialization (stated here once). The lock that serializes the SPM's work on a VG is
this executor's per-VG lock: one op per VG at a time, held from before the op reads anything
until its verdict is known. It is needed here, above the backend, because a reduce reads the
volume's facts, judges them and acts (``reducing.py``): an extend of the same VG must not
come in between, and only a lock around the whole op can keep it out. Two per-VG locks
below it remain, each for callers that have no executor in front of them; on the SPM they
are never contended (the term's backend is used by this executor alone, and this lock is held
around them): ``LvmWriter``'s (``lvm/writer.py``: one lvm2 command per VG at a time in the
process, for the local extender and the CLI; with ``wait_for_locks`` off, lvm2 would fail a
second command instead of queueing it; a reduce's or remove's discard of the extents it
freed runs in the same critical section) and the reserve guard's (``lvm/reserve.py``: its
free-space check and the extend as one step, for the local extender, whose drives extend
concurrently: without it two extends could pass one check and eat into the reserve). Neither
can go without breaking the local mode, so both stay; no other lock serializes a VG.
Nor is anything global below: the default runner keeps an ``lvm`` shell session per VG
(``lvm/shell.py``, ``PerVgShellRunner``) and lvm2's own file locks are per VG, so the ops of
different VGs reach lvm2 at once (``tests/lvm/test_parallel_vgs.py``, ``bench/lvm_bench.py``
``parallel_vgs``).

Step-down hands queued requests back: :meth:`Executor.hand_back` cancels every request
still waiting for the limiter or a VG lock (left unanswered in the hosts' boxes for the next
SPM); a request that got its turn runs to its verdict.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import anyio

from autoextend import logs
from autoextend.clock import Clock
from autoextend.errors import AutoextendError, NotSpmError
from autoextend.spm import devicegate, volumeops
from autoextend.spm.inuse import Look
from autoextend.spm.inusegate import InUseGate
from autoextend.spm.journal import Op
from autoextend.spm.journalring import JournalWriter
from autoextend.spm.reducing import (
    REDUCE_CHECKS,
    ReduceCheck,
    ReduceDesk,
    Verdict,
    fresh_term,
    hot_volume,
    in_use_on_a_host,
    judge,
)
from autoextend.spm.wire import (
    OP_CREATE,
    OP_GROW_PV,
    OP_REDUCE,
    OP_REMOVE,
    REDUCE_OPS,
    VOLUME_OPS,
    ReasonCode,
    Request,
    Status,
)
from autoextend.volumes import (
    SpmAuthority,
    VolumeBackend,
    VolumeNotFound,
    VolumeRef,
    VolumeSpaceError,
)

log = logs.get_logger("spm.server")

# The ops the in-use gate judges (``inusegate.py``).
IN_USE_GATED = (OP_REDUCE, OP_REMOVE)
# What a REMOVE must pass (``reducing.py``'s rules but "already applied": a volume that is
# gone is answered before them, ``volumeops.remove``).
REMOVE_CHECKS = (fresh_term, hot_volume, in_use_on_a_host)


class Executor:
    """Runs the SPM's requests: its turns (limiter, VG locks) and the one op path."""

    def __init__(
        self, backend: VolumeBackend, authority: SpmAuthority, clock: Clock, *,
        hot_window_s: float, max_concurrent: int,
        reduce_checks: Sequence[ReduceCheck] = REDUCE_CHECKS,
        in_use: InUseGate | None = None, epoch: int = 0,
        journal: JournalWriter | None = None,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._journal = journal
        self._authority = authority
        self._epoch = epoch  # the SPM term's lver, logged with every change (chaos checks it)
        self._max_concurrent = max_concurrent
        self._in_use = in_use
        self._reduces = ReduceDesk(backend, authority, clock, hot_window_s, reduce_checks,
                                   in_use, journal)
        self._limiter: anyio.CapacityLimiter | None = None  # made in the event loop
        self._vg_locks: dict[str, anyio.Lock] = {}  # the per-VG serialization (above)
        self._queued: set[anyio.CancelScope] = set()  # requests waiting for their turn

    def hand_back(self) -> None:
        """Cancel every request still waiting for its turn (:meth:`execute` returns None)."""
        for scope in list(self._queued):
            scope.cancel()

    async def execute(self, host: int, generation: int, req: Request) -> Verdict | None:
        """The verdict on ``req`` once it had its turn, or None when it was handed back
        while waiting. Raises NotSpmError when the term is lost."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self._max_concurrent)
        vg_lock = self._vg_locks.setdefault(req.vg, anyio.Lock())
        scope = anyio.CancelScope()
        self._queued.add(scope)
        try:
            with scope:
                async with self._gate(host, req) as first_look:
                    async with self._limiter, vg_lock:
                        # Its turn: from here on only the term's end or the server's own
                        # stop cancels it (hand_back no longer sees this scope).
                        self._queued.discard(scope)
                        return await self._execute(host, generation, req, first_look)
        finally:
            self._queued.discard(scope)
        return None  # handed back while it waited

    @asynccontextmanager
    async def _gate(self, host: int, req: Request) -> AsyncIterator[Look | None]:
        """The in-use gate of a shrinking op (``IN_USE_GATED``; ``inusegate.py``): the
        intent written, the first look and the settle made before the VG's lock (the wait
        must not hold up the VG's extends); the intent taken back when the op is done.
        A GROW-PV: the wait for every host's view of the grown PVs, also before the lock
        (``devicegate.py``). Other ops: nothing (None)."""
        if req.op == OP_GROW_PV and self._in_use is not None:
            await self._wait_for_views(req.vg)
        if req.op not in IN_USE_GATED or self._in_use is None:
            yield None
            return
        async with self._in_use.guard(f"{req.vg}/{req.lv}", req.op, host, req.request_id,
                                      self._authority) as first_look:
            yield first_look

    async def _execute(self, host: int, generation: int, req: Request,
                       first_look: Look | None = None) -> Verdict:
        """Run one op and turn what it raised into a verdict (the VG's lock is held).

        A reduce served again in this term gets the verdict it got before, whatever it was
        (``reducing.py``); an extend is simply run again ("to at least size")."""
        volume = VolumeRef(req.vg, req.lv)
        reduce = req.op in REDUCE_OPS or req.op in VOLUME_OPS
        if reduce:
            given = self._reduces.given(host, generation, req)
            if given is not None:
                return given
        else:
            self._reduces.extend_asked(volume, host)
        try:
            if req.op in VOLUME_OPS:
                verdict = await self._volume_op(host, generation, req, volume, first_look)
            elif reduce:
                verdict = await self._reduces.judge_and_act(host, req, first_look, generation)
            else:
                verdict = await self._extend(host, generation, req, volume)
        except NotSpmError:
            raise
        except VolumeNotFound as err:
            verdict = Verdict(Status.REJECTED, reason=ReasonCode.NO_SUCH_VOLUME, text=str(err))
        except VolumeSpaceError as err:
            verdict = Verdict(Status.FAILED, reason=ReasonCode.NO_SPACE, text=str(err))
        except AutoextendError as err:
            verdict = Verdict(Status.FAILED, reason=ReasonCode.VOLUME_ERROR, text=str(err))
        except Exception as err:  # a bug in a backend must not take the server down
            log.exception("op failed unexpectedly", op=req.op, volume=str(volume),
                          host_id=host, request_id=req.request_id)
            verdict = Verdict(Status.FAILED, reason=ReasonCode.INTERNAL,
                              text=type(err).__name__)
        if reduce:
            self._reduces.remember(host, generation, req, verdict)
        return verdict

    async def _extend(self, host: int, generation: int, req: Request,
                      volume: VolumeRef) -> Verdict:
        self._authority.check()
        result = await self._backend.extend(volume, req.size)
        log.info("volume extended" if result.changed else "volume already large enough",
                 volume=str(volume), size=result.size, host_id=host,
                 request_id=req.request_id, lver=self._epoch)
        if self._journal is not None:
            # Before the reply: a change is journaled before the host hears of it.
            if result.changed:
                await self._journal.note(Op.EXTEND, volume, result.previous, result.size,
                                         host=host, request_id=req.request_id,
                                         generation=generation)
            else:  # an earlier SPM may have made it and died before its record
                await self._journal.note_found(volume, result.size, host=host,
                                               request_id=req.request_id,
                                               generation=generation)
        return Verdict(Status.OK, result.size)

    async def _volume_op(self, host: int, generation: int, req: Request, volume: VolumeRef,
                         first_look: Look | None) -> Verdict:
        """CREATE, REMOVE, GROW-PV (``volumeops.py``) through the term's writer."""
        writer = volumeops.pool_writer(self._backend)
        if writer is None:
            return Verdict(Status.REJECTED, reason=ReasonCode.INTERNAL,
                           text="this SPM's backend cannot create, remove or grow")
        self._authority.check()
        note = self._note(host, generation, req.request_id)
        if req.op == OP_CREATE:
            verdict = await volumeops.create(
                writer, volume, req.size, req.vsize, owner=f"host-{host}",
                request=volumeops.request_tag(host, generation, req.request_id),
                parent=req.parent, note=note)
        elif req.op == OP_REMOVE:
            verdict = await volumeops.remove(
                writer, volume, lambda: self._remove_refusal(volume, first_look), note)
        else:
            assert req.op == OP_GROW_PV
            verdict = await volumeops.grow(writer, req.vg, note, self._grow_refusal)
        log.info("volume op", op=req.op, volume=str(volume), host_id=host,
                 request_id=req.request_id, status=verdict.status.name, size=verdict.size,
                 text=verdict.text, lver=self._epoch, parent=req.parent or None)
        return verdict

    def _note(self, host: int, generation: int, request_id: int) -> volumeops.Note | None:
        """The journal, bound to one request (None without a journal): a change is journaled
        before the host hears of it, as an extend is."""
        journal = self._journal
        if journal is None:
            return None

        async def note(op: Op, volume: VolumeRef, old_size: int, new_size: int, *,
                       found: bool = False) -> object:
            if found:
                return await journal.note_created_late(
                    volume, new_size, host=host, request_id=request_id, generation=generation)
            return await journal.note(op, volume, old_size, new_size, host=host,
                                      request_id=request_id, generation=generation)

        return note

    async def _grow_refusal(self, pvs: Sequence[devicegate.PvView]) -> str | None:
        """Why the PVs that grew must not be resized yet (``devicegate.py``), or None."""
        if self._in_use is None:
            return None
        states = self._in_use.states()
        return devicegate.grow_refusal(pvs, await self._in_use.look(states), states)

    async def _wait_for_views(self, vg: str) -> None:
        """Before the VG's lock: wait (a few publish periods at most) until every live
        host's record shows the PVs of ``vg`` at least as large as this SPM sees them;
        the check under the lock (:meth:`_grow_refusal`) decides."""
        writer = volumeops.pool_writer(self._backend)
        gate = self._in_use
        if writer is None or gate is None:
            return
        deadline = self._clock.now() + devicegate.WAIT_PERIODS * gate.period_s + gate.margin_s
        while True:
            try:
                pvs = await writer.pv_growth(vg)
            except AutoextendError:
                return  # the op itself reports it
            if await self._grow_refusal(pvs) is None or self._clock.now() >= deadline:
                return
            await self._clock.sleep(gate.period_s / 2)

    async def _remove_refusal(self, volume: VolumeRef, first_look: Look | None) -> str | None:
        """Why ``volume`` must not be removed now: the young-term and hot rules and the
        in-use gate's second look (the facts a reduce to 0 would have), or None."""
        facts = await self._reduces.facts(volume, 0, first_look)
        verdict = judge(facts, REMOVE_CHECKS)
        return None if verdict is None else verdict.text
