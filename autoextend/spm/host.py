"""The host side of the mailbox: send extend requests to the SPM and wait for the replies.

:class:`HostMailbox` owns this host's request box and its ring sector (only this host writes
them). :meth:`HostMailbox.run` is the one task that does I/O (``hostio.py``); callers of
:meth:`HostMailbox.request` only change in-memory state and wait. Each slot is in one state
of ``slots.SlotState`` (free, sent, answered), changed only by ``slots.SlotTable``; a request
in flight and its waiters are one ``pending.Pending``.

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

import itertools
import random

import anyio
from anyio.abc import TaskStatus

from autoextend import logs
from autoextend.checks import ALL_ON, Checks
from autoextend.clock import Clock, MonotonicClock
from autoextend.errors import AutoextendError
from autoextend.sectors import SectorStorage
from autoextend.spm.config import MailboxSettings
from autoextend.spm.errors import MailboxClosed, MailboxTimeout
from autoextend.spm.generation import next_generation
from autoextend.spm.hostio import HostSectors
from autoextend.spm.hostpolicy import (
    HostMailboxCounters,
    local_rejection,
    next_retry_delay,
    reply_poll_interval,
)
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.pending import Pending, Waiter
from autoextend.spm.slots import CLEAR_DELAY_S, SlotState, SlotTable
from autoextend.spm.waiting import sleep_or_event
from autoextend.spm.wire import MAX_REQUEST_ID, OP_EXTEND, ReasonCode, Reply, Status
from autoextend.volumes import VolumeRef

log = logs.get_logger("spm.host")

__all__ = [
    "CLEAR_DELAY_S",
    "HostMailbox",
    "HostMailboxCounters",
    "SlotState",
    "local_rejection",
    "next_retry_delay",
    "reply_poll_interval",
]


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
        self._io = HostSectors(storage, layout, host_id, settings, self._clock, self.counters,
                               self._log)
        self.generation = 0
        self._running = False
        self._wake: anyio.Event | None = None
        self._next_id = 1
        self._slots = SlotTable(layout)  # each slot's state; the sectors to write
        self._by_volume: dict[VolumeRef, Pending] = {}
        self._queue: list[Pending] = []  # waiting for a free slot, oldest first

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
        op: int = OP_EXTEND, vsize: int = 0, parent: str = "",
    ) -> Reply:
        """Ask the SPM to extend ``volume`` to at least ``size`` bytes and wait for its reply.

        ``op``: any ``wire`` op; ``vsize``: a create's virtual size, ``parent`` a snapshot
        create's parent LV (``wire.Request``).
        Returns the reply (OK, FAILED or REJECTED). A name or size that cannot be sent gets a
        REJECTED reply made here (request_id 0) without any I/O.

        Raises:
            MailboxTimeout: no reply within ``timeout_s`` (default ``request_timeout_s``).
            MailboxClosed: :meth:`run` is not running, or stopped while waiting.
        """
        if not self._running or self._wake is None:
            raise MailboxClosed()
        rejection = local_rejection(volume, size, op, parent)
        if rejection is not None:
            return rejection
        self.counters.requests += 1
        limit = self._settings.request_timeout_s if timeout_s is None else timeout_s
        waiter = Waiter(size, self._clock.now() + limit)
        pending = self._by_volume.get(volume)
        if pending is not None and (op != OP_EXTEND or pending.op != OP_EXTEND):
            # A reduce never joins nor supersedes anything, nor is joined.
            return Reply(0, 0, Status.FAILED, 0, ReasonCode.VOLUME_BUSY,
                         "another request for this volume is in flight")
        if pending is None:
            pending = Pending(volume, size, self._new_id(), self._clock.now(), op=op,
                              vsize=vsize, parent=parent)
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
                pending.drop(waiter)
                if not pending.waiters:
                    self._withdraw(pending)
        if waiter.reply is not None:
            return waiter.reply
        if waiter.closed:
            raise MailboxClosed()
        raise MailboxTimeout(str(volume), size, limit)

    def _new_id(self) -> int:
        request_id = self._next_id
        self._next_id = 1 if self._next_id >= MAX_REQUEST_ID else self._next_id + 1
        return request_id

    def _changed(self) -> None:
        """Slots changed that must be written now: wake the run task."""
        if self._wake is not None:
            self._wake.set()

    def _withdraw(self, pending: Pending) -> None:
        if self._by_volume.get(pending.volume) is not pending:
            return
        del self._by_volume[pending.volume]
        if pending in self._queue:
            self._queue.remove(pending)
        if pending.slot is not None:
            self.counters.withdrawn += 1
            self._slots.withdraw(pending.slot)
            self._changed()

    def _reissue(self, pending: Pending, size: int) -> None:
        """Rewrite the pending slot with a new id for ``size`` (supersede, or re-ask)."""
        pending.reissue(self._new_id(), size, self._clock.now())
        self.counters.sent += 1
        if pending.slot is not None:
            self._slots.send(pending.slot, pending.request())
            self._changed()

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
                for waiter in pending.waiters:
                    waiter.closed = True
                pending.finish(list(pending.waiters))
            self._by_volume.clear()
            self._queue.clear()

    async def _start(self) -> None:
        self.generation = await next_generation(self._storage, self._layout, self._host_id,
                                                  self._rng)
        self._io.ring_count = 0
        self._slots.reset()
        await self._flush()
        self._log.info("host mailbox started", generation=self.generation)

    def _sleep_time(self) -> float | None:
        if self._slots.dirty or self._queue:
            return 0.0 if self._slots.dirty else self._settings.reply_poll_interval_s
        clear = self._slots.clear_wait(self._clock.now())
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
        self._slots.clear_answered(now)
        try:
            rang = await self._flush() if self._slots.dirty else False
            if not rang and any(p.slot is not None for p in self._by_volume.values()):
                # (Right after a ring the SPM cannot have answered yet: poll next time.)
                await self._poll_replies()
                await self._io.ring_again(self._slots, self.generation, self.in_flight)
        except AutoextendError as err:
            self.counters.io_errors += 1
            self._repeats.warning("mailbox I/O failed, will retry", error=str(err))
            await self._clock.sleep(self._settings.reply_poll_max_s)
        else:
            self._repeats.clear("mailbox I/O failed, will retry")

    def _expire(self, now: float) -> None:
        for pending in list(self._by_volume.values()):
            for waiter in pending.expired(now):
                self.counters.timeouts += 1
                pending.finish([waiter])
                self._log.warning("no reply from the SPM", volume=str(pending.volume),
                                  request_id=pending.request_id)
            if not pending.waiters:
                self._withdraw(pending)

    def _assign_slots(self, now: float) -> None:
        free = self._slots.free()
        while self._queue and free:
            pending = self._queue.pop(0)
            pending.slot = free.pop(0)
            pending.created = now
            self._slots.send(pending.slot, pending.request())
            self._changed()

    async def _flush(self) -> bool:
        """Write the dirty box sectors (one I/O for the range) and, once that is durable, the
        ring sector (when it holds a changed slot, or to ring). True if it rang."""
        dirty, ring = self._slots.take_dirty()
        box = [i for i in dirty if i > 0]
        try:
            if box:
                await self._io.write_box(self._slots, box, self.generation)
            if ring or 0 in dirty:
                await self._io.ring(self._slots, self.generation)
        except BaseException:
            self._slots.put_back(dirty, ring)
            raise
        return ring

    async def _poll_replies(self) -> None:
        """Read the reply sectors of the sent slots and take the replies meant for them:
        same slot, same id, and this mailbox's generation (``checks.match_generation``)."""
        by_sector: dict[int, list[Pending]] = {}
        for pending in self._by_volume.values():
            if pending.slot is not None:
                sector = self._layout.reply_slot_sector(pending.slot)
                by_sector.setdefault(sector, []).append(pending)
        replies = await self._io.read_replies(set(by_sector))
        for pending in itertools.chain.from_iterable(by_sector.values()):
            reply = None if pending.slot is None else replies.get(pending.slot)
            if reply is not None and (reply.generation == self.generation
                                      or not self._match_generation):
                self._take_reply(pending, reply)

    def _take_reply(self, pending: Pending, reply: Reply) -> None:
        satisfied, again = pending.answered_by(reply)
        if again is not None:
            self._finish_all(pending, satisfied, reply)
            self._reissue(pending, again)
            return
        if not satisfied:
            return
        self._finish_all(pending, satisfied, reply)
        if reply.request_id == pending.request_id or not pending.waiters:
            assert pending.slot is not None
            del self._by_volume[pending.volume]
            self._slots.answer(pending.slot, self._clock.now())

    def _finish_all(self, pending: Pending, waiters: list[Waiter], reply: Reply) -> None:
        self.counters.replies += 1
        self._io.answered()
        pending.finish(waiters, reply)
