"""The host side of the mailbox: send extend requests to the SPM and wait for the replies.

:class:`HostMailbox` owns this host's request box and its ring sector (only this host writes
them). :meth:`HostMailbox.run` is the one task that does I/O; callers of
:meth:`HostMailbox.request` only change in-memory state and wait.

Slot handshake (no extra round trip):

1. The host writes request ``(generation, id)`` into a free slot and, once that write is
   durable, rings: it writes its ring sector with the next count (``watch.py``).
2. The SPM writes a reply carrying the same ``(generation, id)`` into the same slot of the
   host's reply box. It never writes the request box.
3. The host reads the reply, wakes the waiters and clears its slot (written with the next
   flush, no ring). The slot is free again at once: a stale reply left in the reply
   slot can never match, because ids never repeat within a generation.

Withdrawing: when the last waiter gives up (timeout, cancellation), the host clears the slot.
An SPM that already started still extends (harmless: extends only grow a volume to at least
the size asked) and replies; the reply is ignored.

Coalescing: a request for a volume already in flight joins it when it asks for no more than
the size in flight. Asking for more *supersedes* it: the same slot is rewritten with a new id
and the larger size; everybody waits for that reply, except that an OK reply to the earlier
id already satisfies waiters that asked for no more than the size it reports. If the larger
size fails or is rejected, the waiters that asked for less are asked for again on their own
(the larger size may be exactly what was wrong).

Restart: :meth:`run` starts a new generation (one more than any generation found in the two
boxes) and writes an empty box, withdrawing whatever the previous incarnation left.

No reply: it rings again after ``ring_retry_initial_s``, doubling up to ``ring_retry_max_s``
(a safety net only: rings are never lost); the request stays in its slot so a new SPM serves
it after a failover.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskStatus

from autoextend import logs
from autoextend.checks import ALL_ON, Checks
from autoextend.clock import Clock, MonotonicClock
from autoextend.errors import AutoextendError
from autoextend.sectors import SectorStorage
from autoextend.spm.config import MailboxSettings
from autoextend.spm.errors import CorruptSector, MailboxClosed, MailboxTimeout
from autoextend.spm.generation import next_generation
from autoextend.spm.hostpolicy import (
    HostMailboxCounters,
    local_rejection,
    next_retry_delay,
    reply_poll_interval,
)
from autoextend.spm.layout import SLOTS_PER_HOST, MailboxLayout
from autoextend.spm.waiting import sleep_or_event
from autoextend.spm.wire import (
    MAX_REQUEST_ID,
    OP_EXTEND,
    Kind,
    ReasonCode,
    Reply,
    Request,
    Ring,
    Status,
    decode_sector,
    encode_ring,
    encode_sector,
)
from autoextend.volumes import VolumeRef

log = logs.get_logger("spm.host")

__all__ = [
    "CLEAR_DELAY_S",
    "HostMailbox",
    "HostMailboxCounters",
    "local_rejection",
    "next_retry_delay",
    "reply_poll_interval",
]

CLEAR_DELAY_S = 1.0  # an answered slot is cleared on disk with the next write, or after this


@dataclass(eq=False)
class _Waiter:
    size: int
    deadline: float
    done: anyio.Event = field(default_factory=anyio.Event)
    reply: Reply | None = None
    timed_out: bool = False
    closed: bool = False


@dataclass(eq=False)
class _Pending:
    volume: VolumeRef
    size: int
    request_id: int
    created: float
    slot: int | None = None
    op: int = OP_EXTEND
    waiters: list[_Waiter] = field(default_factory=list)
    earlier: dict[int, int] = field(default_factory=dict)  # superseded id -> its size


class HostMailbox:
    """One host's end of the mailbox. Start :meth:`run` in a task group (``await tg.start``),
    then call :meth:`request` from any task."""

    def __init__(
        self,
        storage: SectorStorage,
        layout: MailboxLayout,
        host_id: int,
        settings: MailboxSettings,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        checks: Checks = ALL_ON,
    ) -> None:
        layout.check_host(host_id)
        layout.check_fits(storage.size)
        # checks.match_generation protects "a host acts only on replies to its own
        # incarnation" (a reply must carry this mailbox's generation). Only the simulation's
        # generation mutant passes it off (autoextend/checks.py).
        self._match_generation = checks.match_generation
        self._rng = rng
        self._storage = storage
        self._layout = layout
        self._host_id = host_id
        self._settings = settings
        self._clock = clock or MonotonicClock()
        self._log = log.bind(host_id=host_id)
        self.counters = HostMailboxCounters()
        self._repeats = logs.Repeats(self._log, self._clock.now)  # retried I/O: once, then a count
        self.generation = 0
        self._running = False
        self._wake: anyio.Event | None = None
        self._next_id = 1
        self._slots: list[Request | None] = [None] * SLOTS_PER_HOST
        self._by_volume: dict[VolumeRef, _Pending] = {}
        self._queue: list[_Pending] = []  # waiting for a free slot, oldest first
        self._dirty: set[int] = set()  # request sectors to write (0 = the ring sector)
        self._ring_needed = False
        self._ring_count = 0
        self._box_seq = 0
        self._lazy: set[int] = set()  # sectors holding answered slots not yet cleared on disk
        self._lazy_since = 0.0
        self._rung_at = -1e18
        self._retry_delay = 0.0
        self._logged: dict[int, str] = {}  # reply sector -> corruption reason logged

    @property
    def host_id(self) -> int:
        return self._host_id

    @property
    def in_flight(self) -> int:
        """Requests written or queued that still wait for a reply."""
        return len(self._by_volume)

    # The caller's side.

    async def request(
        self, volume: VolumeRef, size: int, *, timeout_s: float | None = None,
        op: int = OP_EXTEND,
    ) -> Reply:
        """Ask the SPM to extend ``volume`` to at least ``size`` bytes and wait for its reply.

        Returns the reply (OK, FAILED or REJECTED). A name or size that cannot be sent gets a
        REJECTED reply made here (request_id 0) without any I/O.

        Raises:
            MailboxTimeout: no reply within ``timeout_s`` (default ``request_timeout_s``).
            MailboxClosed: :meth:`run` is not running, or stopped while waiting.
        """
        if not self._running or self._wake is None:
            raise MailboxClosed()
        rejection = local_rejection(volume, size)
        if rejection is not None:
            return rejection
        self.counters.requests += 1
        limit = self._settings.request_timeout_s if timeout_s is None else timeout_s
        waiter = _Waiter(size, self._clock.now() + limit)
        pending = self._by_volume.get(volume)
        if pending is not None and (op != OP_EXTEND or pending.op != OP_EXTEND):
            # A reduce never joins nor supersedes anything, nor is joined.
            return Reply(0, 0, Status.FAILED, 0, ReasonCode.VOLUME_BUSY,
                         "another request for this volume is in flight")
        if pending is None:
            pending = _Pending(volume, size, self._new_id(), self._clock.now(), op=op)
            self._by_volume[volume] = pending
            self._queue.append(pending)
            self.counters.sent += 1
        elif size > pending.size:
            self.counters.superseded += 1
            self._reissue(pending, size)
        else:
            self.counters.coalesced += 1
        pending.waiters.append(waiter)
        self._wake.set()
        try:
            await waiter.done.wait()
        finally:
            if not waiter.done.is_set():  # cancelled
                self._drop_waiter(pending, waiter)
        if waiter.reply is not None:
            return waiter.reply
        if waiter.closed:
            raise MailboxClosed()
        raise MailboxTimeout(str(volume), size, limit)

    def _new_id(self) -> int:
        request_id = self._next_id
        self._next_id = 1 if self._next_id >= MAX_REQUEST_ID else self._next_id + 1
        return request_id

    def _write_slot(
        self, slot: int, request: Request | None, *, ring: bool, lazy: bool = False
    ) -> None:
        """Change a slot in memory; the run task writes it. ``lazy``: an answered slot, whose
        clearing may wait for the next write (or CLEAR_DELAY_S): the SPM already answered
        it, so seeing it again changes nothing."""
        self._slots[slot] = request
        sector = self._layout.request_slot_sector(slot)
        if lazy:
            if not self._lazy:
                self._lazy_since = self._clock.now()
            self._lazy.add(sector)
            return
        self._dirty.add(sector)
        self._ring_needed = self._ring_needed or ring
        if self._wake is not None:
            self._wake.set()

    def _drop_waiter(self, pending: _Pending, waiter: _Waiter) -> None:
        if waiter in pending.waiters:
            pending.waiters.remove(waiter)
        if not pending.waiters:
            self._withdraw(pending)

    def _withdraw(self, pending: _Pending) -> None:
        if self._by_volume.get(pending.volume) is not pending:
            return
        del self._by_volume[pending.volume]
        if pending in self._queue:
            self._queue.remove(pending)
        if pending.slot is not None:
            self.counters.withdrawn += 1
            self._write_slot(pending.slot, None, ring=False)

    def _finish(self, pending: _Pending, waiter: _Waiter) -> None:
        pending.waiters.remove(waiter)
        waiter.done.set()

    # The I/O task.

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start a new generation, then serve requests until cancelled.

        Raises:
            StorageError: the boxes could not be read or written at start.
        """
        self._wake = anyio.Event()
        await self._start()
        self._running = True
        task_status.started()
        try:
            while True:
                await self._step()
                await sleep_or_event(self._clock, self._sleep_time(), self._wake)
                self._wake = anyio.Event()
        finally:
            self._running = False
            for pending in list(self._by_volume.values()):
                for waiter in list(pending.waiters):
                    waiter.closed = True
                    self._finish(pending, waiter)
            self._by_volume.clear()
            self._queue.clear()

    async def _start(self) -> None:
        self.generation = await next_generation(self._storage, self._layout, self._host_id,
                                                  self._rng)
        self._ring_count = 0
        self._dirty = set(range(self._layout.request_sectors))
        self._ring_needed = True
        await self._flush()
        self._log.info("host mailbox started", generation=self.generation)

    def _sleep_time(self) -> float | None:
        if self._dirty or self._queue:
            return 0.0 if self._dirty else self._settings.reply_poll_interval_s
        clear = (None if not self._lazy else
                 max(0.0, self._lazy_since + CLEAR_DELAY_S - self._clock.now()))
        if not self._by_volume:
            return clear  # idle: no I/O until a request comes (or answered slots to clear)
        newest = max(p.created for p in self._by_volume.values())
        poll = reply_poll_interval(
            self._clock.now() - newest,
            self._settings.reply_poll_interval_s,
            self._settings.reply_poll_max_s,
        )
        return poll if clear is None else min(poll, clear)

    async def _step(self) -> None:
        now = self._clock.now()
        self._expire(now)
        self._assign_slots(now)
        # (The same sum as in _sleep_time: a difference could round below it and spin.)
        if self._lazy and (self._dirty or now >= self._lazy_since + CLEAR_DELAY_S):
            self._dirty |= self._lazy
            self._lazy = set()
        try:
            rang = await self._flush() if self._dirty else False
            if not rang and any(p.slot is not None for p in self._by_volume.values()):
                # (Right after a ring the SPM cannot have answered yet: poll next time.)
                await self._poll_replies()
                await self._keep_bell_rung(self._clock.now())
        except AutoextendError as err:
            self.counters.io_errors += 1
            self._repeats.warning("mailbox I/O failed, will retry", error=str(err))
            await self._clock.sleep(self._settings.reply_poll_max_s)
        else:
            self._repeats.clear("mailbox I/O failed, will retry")

    def _expire(self, now: float) -> None:
        for pending in list(self._by_volume.values()):
            for waiter in [w for w in pending.waiters if w.deadline <= now]:
                waiter.timed_out = True
                self.counters.timeouts += 1
                self._finish(pending, waiter)
                self._log.warning("no reply from the SPM", volume=str(pending.volume),
                                  request_id=pending.request_id)
            if not pending.waiters:
                self._withdraw(pending)

    def _assign_slots(self, now: float) -> None:
        free = [i for i, slot in enumerate(self._slots) if slot is None]
        while self._queue and free:
            pending = self._queue.pop(0)
            pending.slot = free.pop(0)
            pending.created = now
            self._write_slot(pending.slot, Request(pending.request_id, pending.volume.vg,
                                                   pending.volume.lv, pending.size,
                                                   pending.op), ring=True)

    async def _flush(self) -> bool:
        """Write the dirty box sectors (one I/O for the range) and, once that is durable, the
        ring sector (when it holds a changed slot, or to ring). True if it rang."""
        layout = self._layout
        dirty, self._dirty = self._dirty, set()
        ring, self._ring_needed = self._ring_needed, False
        box = sorted(i for i in dirty if i > 0)
        try:
            if box:
                data = b"".join(
                    encode_sector(Kind.REQUEST, layout.sector_size, i, self._host_id,
                                  self.generation,
                                  [self._slots[j] for j in layout.request_sector_slots(i)])
                    for i in range(box[0], box[-1] + 1)
                )
                await self._storage.write(
                    layout.request_offset(self._host_id) + (box[0] - 1) * layout.sector_size,
                    data,
                )
                self._box_seq = (self._box_seq + 1) & 0xFFFFFFFF
            if ring or 0 in dirty:
                await self._ring()
        except BaseException:
            self._dirty |= dirty
            self._ring_needed = self._ring_needed or ring
            raise
        return ring

    async def _ring(self) -> None:
        """Write our ring sector (the head slots, the box sequence) with the next count;
        nobody else writes it."""
        layout = self._layout
        count = self._ring_count + 1
        head = tuple(self._slots[j] for j in layout.request_sector_slots(0))
        await self._storage.write(
            layout.ring_offset(self._host_id),
            encode_ring(layout.sector_size,
                        Ring(self._host_id, self.generation, count, self._box_seq, head)),
        )
        self._ring_count = count
        self._rung_at = self._clock.now()
        self.counters.rings += 1

    async def _keep_bell_rung(self, now: float) -> None:
        """Ring again, with backoff, while no reply comes (a safety net: rings themselves are
        never lost)."""
        delay = self._retry_delay or self._settings.ring_retry_initial_s
        if now - self._rung_at >= delay:
            self._log.info("no reply yet, ringing again", pending=self.in_flight)
            await self._ring()
            self._retry_delay = next_retry_delay(
                delay, self._settings.ring_retry_initial_s, self._settings.ring_retry_max_s
            )

    async def _poll_replies(self) -> None:
        layout = self._layout
        ss = layout.sector_size
        by_sector: dict[int, list[_Pending]] = {}
        for pending in self._by_volume.values():
            if pending.slot is not None:
                by_sector.setdefault(layout.reply_slot_sector(pending.slot), []).append(pending)
        first, last = min(by_sector), max(by_sector)
        data = await self._storage.read(
            layout.reply_offset(self._host_id) + first * ss, (last - first + 1) * ss
        )
        for index, pendings in by_sector.items():
            raw = data[(index - first) * ss : (index - first + 1) * ss]
            try:
                sector = decode_sector(raw, Kind.REPLY, index, self._host_id,
                                       len(layout.reply_sector_slots(index)))
            except CorruptSector as err:
                self.counters.corrupt_sectors += 1
                if self._logged.get(index) != err.reason:  # logged once, counted every time
                    self._logged[index] = err.reason
                    self._log.warning("corrupt reply sector skipped", error=str(err))
                continue
            self._logged.pop(index, None)
            base = layout.reply_sector_slots(index).start
            for pending in pendings:
                assert pending.slot is not None
                reply = sector.slots[pending.slot - base]
                if isinstance(reply, Reply) and (reply.generation == self.generation
                                                 or not self._match_generation):
                    self._take_reply(pending, reply)

    def _take_reply(self, pending: _Pending, reply: Reply) -> None:
        if reply.request_id == pending.request_id and reply.status is not Status.OK:
            # A failed or rejected size answers those who asked for it; anyone who joined
            # with a smaller size is asked for again on their own (the larger size may be
            # what was wrong).
            satisfied = [w for w in pending.waiters if w.size >= pending.size]
            rest = [w for w in pending.waiters if w.size < pending.size]
            if rest:
                self._finish_all(pending, satisfied, reply)
                self._reissue(pending, max(w.size for w in rest))
                return
            satisfied = list(pending.waiters)
        elif reply.request_id == pending.request_id:
            satisfied = list(pending.waiters)
        elif reply.request_id in pending.earlier and reply.status is Status.OK:
            satisfied = [w for w in pending.waiters if w.size <= reply.size]
        else:
            return
        if not satisfied:
            return
        self._finish_all(pending, satisfied, reply)
        if reply.request_id == pending.request_id or not pending.waiters:
            assert pending.slot is not None
            del self._by_volume[pending.volume]
            self._write_slot(pending.slot, None, ring=False, lazy=True)

    def _finish_all(self, pending: _Pending, waiters: list[_Waiter], reply: Reply) -> None:
        self.counters.replies += 1
        self._retry_delay = 0.0
        for waiter in waiters:
            waiter.reply = reply
            self._finish(pending, waiter)

    def _reissue(self, pending: _Pending, size: int) -> None:
        """Rewrite the pending slot with a new id for ``size`` (supersede, or re-ask)."""
        pending.earlier[pending.request_id] = pending.size
        pending.request_id = self._new_id()
        pending.size = size
        pending.created = self._clock.now()
        self.counters.sent += 1
        if pending.slot is not None:
            self._write_slot(pending.slot, Request(pending.request_id, pending.volume.vg,
                                                   pending.volume.lv, size, pending.op),
                              ring=True)
