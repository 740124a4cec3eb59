"""The SPM side of the mailbox: read requests, extend through the volume backend, reply.

Run :meth:`SpmMailServer.run` only inside the lease's SPM scope; the server also calls
``authority.check()`` before every extend and every reply write, and stops (raising
NotSpmError) when it fails.

Each poll asks the ring watch (``watch.py``) which hosts rang (the live hosts' ring sectors
at a fast cadence, a sweep of every other ring sector now and then, the active hosts' ring
sectors at every poll), takes the requests in
those ring sectors and reads the request boxes that may hold more (``inbox.py``), plus a
slice of a slow round-robin full scan (the safety net).
On start it reads every ring sector, then every reply box (what was already answered) and
every request box, and serves what is pending: after a failover nothing is lost, and a
request whose reply is already on disk is not executed again.

Ops run concurrently across VGs (at most ``max_concurrent_extends``) and one at a time per
VG, through one path for every op (``execute.py``, which also states the per-VG
serialization); replies go out through the reply boxes (``replybox.py``). A request is
identified by ``(host, slot, generation, request_id)``; it is served at most once per server
while its reply is known, and every extend is "to at least size", so a duplicate after a
failover cannot grow a volume past what was asked. REDUCE and REDUCE_CHECK requests take the
same path (validation, the VG's lock) to ``reducing.py``, whose first check makes a
duplicate of a reduce answer OK without acting again.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup, TaskStatus

from autoextend import logs
from autoextend.clock import Clock, MonotonicClock
from autoextend.errors import NotSpmError
from autoextend.sectors import SectorStorage, StorageError
from autoextend.spm.config import MailboxSettings
from autoextend.spm.counters import ServerCounters
from autoextend.spm.execute import Executor
from autoextend.spm.inbox import Inbox
from autoextend.spm.inusegate import InUseGate
from autoextend.spm.journalring import JournalWriter
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.peek import PeekSource, PeekStats
from autoextend.spm.reducing import REDUCE_CHECKS, ReduceCheck
from autoextend.spm.replybox import ReplyBoxes
from autoextend.spm.validate import check_request
from autoextend.spm.waiting import sleep_or_event
from autoextend.spm.watch import WAKE_EARLY_S, LiveHosts, RingWatch, peek_source, scan_batch
from autoextend.spm.wire import MalformedSlot, ReasonCode, Reply, Request, Status
from autoextend.volumes import SpmAuthority, VolumeBackend

log = logs.get_logger("spm.server")

__all__ = ["ServerCounters", "SpmMailServer"]


@dataclass(frozen=True)
class _Key:
    host: int
    slot: int


class SpmMailServer:
    """Serves every host's mailbox while this host is SPM."""

    def __init__(
        self,
        storage: SectorStorage,
        backend: VolumeBackend,
        pool_vgs: Collection[str],
        *,
        layout: MailboxLayout,
        authority: SpmAuthority,
        settings: MailboxSettings,
        clock: Clock | None = None,
        epoch: int = 0,
        live_hosts: LiveHosts | None = None,
        reduce_checks: Sequence[ReduceCheck] = REDUCE_CHECKS,
        in_use: InUseGate | None = None,
        journal: JournalWriter | None = None,
        peek: PeekSource | None | bool = True,
    ) -> None:
        """``live_hosts``, when given, returns the host ids the lease sees alive (it must be
        cheap and must not block: it is called from the event loop about once a second).
        Their ring sectors are read at the fast live-sweep cadence, every other one by the
        slow sweep; it decides only when a sector is read, never whether a request is
        served, and a failing or odd result falls back to the full sweep.
        ``reduce_checks``: what a reduce must pass (``reducing.py``; tests only change it).
        ``in_use``: the hosts' in-use records a REDUCE is judged by (``inusegate.py``).
        ``journal``: where every change is recorded (``journalring.py``; None: not kept).
        ``peek``: the ring peeker's reader (``peek.py``); True: the storage's own when it
        has one (O_DIRECT) and the clock is real; False: none."""
        layout.check_fits(storage.size)
        self._pool_vgs = frozenset(pool_vgs)
        self._layout = layout
        self._authority = authority
        self._settings = settings
        self._clock = clock or MonotonicClock()
        self.counters = ServerCounters()
        self._repeats = logs.Repeats(log)  # retried reads and writes: once, then a count
        if isinstance(peek, bool):
            peek = peek_source(storage, self._clock) if peek else None
        self._watch = RingWatch(storage, layout, settings, self.counters, live_hosts,
                                repeats=self._repeats, peek=peek)
        self._inbox = Inbox(storage, layout, self.counters, repeats=self._repeats)
        self._boxes = ReplyBoxes(storage, layout, authority, self.counters, self._repeats,
                                 epoch=epoch, write_failed=self._rescan_later)
        self._inflight: dict[_Key, tuple[int, int]] = {}
        self._newer_seen: set[_Key] = set()
        self._rescan: set[int] = set()
        self._executor = Executor(backend, authority, self._clock,
                                  hot_window_s=settings.hot_window_s,
                                  max_concurrent=settings.max_concurrent_extends,
                                  reduce_checks=reduce_checks, in_use=in_use,
                                  epoch=epoch, journal=journal)
        self.journal = journal
        self._in_use = in_use
        self._accepting = True
        self._scan_cursor = 0
        self._scan_credit = 0.0
        self._tg: TaskGroup | None = None
        self._lost: NotSpmError | None = None
        self._wake: anyio.Event | None = None
        self._stopped: anyio.Event | None = None

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    @property
    def peek_stats(self) -> PeekStats | None:
        """The ring peeker's reads (``peek.py``; None: no peeker runs)."""
        return self._watch.peek_stats

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled or stepped down (then it returns once in-flight work ended).

        ``task_status.started()`` is called after the start-up scan has taken up everything
        pending. Raises NotSpmError when ``authority.check()`` fails, StorageError when the
        start-up reads fail.
        """
        self._wake = anyio.Event()
        self._stopped = anyio.Event()
        layout = self._layout
        self._lost = None
        try:
            self._authority.check()
            if self._in_use is not None:  # a previous SPM's intents end with its term
                await self._in_use.clear_intents()
            await self._watch.start(self._clock.now(), self._nudged)  # rings, then boxes
            await self._boxes.load()
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self.journal is not None:
                    tg.start_soon(self._prepare_journal, self.journal)
                await self._scan(list(range(1, layout.max_hosts + 1)))
                log.info("SPM mail server started", pending=self.in_flight,
                         max_hosts=layout.max_hosts,
                         sweep_interval_s=round(self._watch.sweep_interval_s, 3))
                task_status.started()
                last = self._clock.now()
                while self._accepting:
                    await sleep_or_event(self._clock, self._idle_wait(), self._wake)
                    if not self._accepting or not self._still_spm():
                        break
                    if self._wake.is_set():  # nudged by the ring peeker: wait anew next
                        self._wake = anyio.Event()
                    now = self._clock.now()
                    await self._poll(now - last)
                    last = now
                self._executor.hand_back()
        finally:
            self._watch.stop()
            self._tg = None
            self._stopped.set()
            self._repeats.clear_all()
        if self._lost is not None:
            log.warning("SPM mail server stopped: not SPM", reason=self._lost.reason)
            raise self._lost
        log.info("SPM mail server stopped", handed_back=self.counters.handed_back)

    def _nudged(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _prepare_journal(self, journal: JournalWriter) -> None:
        """Find the journal's head while the first requests are read (else the first
        change does)."""
        try:
            await journal.prepare()
        except StorageError as err:
            log.warning("journal head not found yet: reading the ring failed", error=str(err))

    def _idle_wait(self) -> float:
        """Seconds until the next poll: when the ring watch has something due (at least
        ``poll_interval_s``; at once after a failed read's retry), at most a sweep interval
        (the slow full scan's credit keeps flowing). An idle SPM wakes for its sweeps, not
        every ``poll_interval_s``."""
        poll = self._settings.poll_interval_s
        if self._rescan:
            return poll
        now = self._clock.now()
        due = self._watch.next_due(now) - now - WAKE_EARLY_S
        return min(max(poll, due), self._watch.max_wait_s)

    async def step_down(self, timeout_s: float | None = None) -> None:
        """Stop taking requests, hand back queued ones (left unanswered in the hosts' boxes
        for the next SPM), let running extends finish and reply, then return once :meth:`run`
        has returned. After ``timeout_s`` running extends are cancelled too."""
        self._accepting = False
        self._executor.hand_back()
        if self._wake is not None:
            self._wake.set()
        if self._stopped is None:
            return
        with anyio.move_on_after(timeout_s):
            await self._stopped.wait()
            return
        if self._tg is not None:
            self._tg.cancel_scope.cancel()
        await self._stopped.wait()

    def _still_spm(self) -> bool:
        try:
            self._authority.check()
        except NotSpmError as err:
            self._lose(err)
            return False
        return True

    def _lose(self, err: NotSpmError) -> None:
        """Authority lost: stop at once, in-flight work is abandoned (never replied)."""
        if self._lost is None:
            self._lost = err
        self._accepting = False
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    # Reading.

    async def _poll(self, elapsed: float) -> None:
        """Take what rang; read the boxes that may hold something new; rescan what failed
        before and the next slice of the slow full scan."""
        self.counters.polls += 1
        rung = await self._watch.poll(self._clock.now())
        for host, ring in rung.items():
            self._inbox.take_ring(host, ring)
        scan = self._rescan | set(self._full_scan_slice(elapsed))
        self._rescan = set()
        failed = await self._inbox.read_rings(sorted(scan))
        boxes = scan | {host for host in rung if self._inbox.box_stale(host)}
        failed |= await self._inbox.read_boxes(sorted(boxes))
        self._rescan |= failed
        for host in sorted(scan | set(rung)):
            self._take(host)

    def _full_scan_slice(self, elapsed: float) -> list[int]:
        """The next hosts of the round-robin full scan (every box once per interval)."""
        max_hosts = self._layout.max_hosts
        self._scan_credit += elapsed * max_hosts / self._settings.full_scan_interval_s
        count = min(int(self._scan_credit), max_hosts)
        if count < scan_batch(max_hosts, self._settings.full_scan_interval_s):
            return []  # fewer, larger reads: a batch about every FULL_SCAN_BATCH_S
        self._scan_credit -= count
        hosts = [(self._scan_cursor + i) % max_hosts + 1 for i in range(count)]
        self._scan_cursor = (self._scan_cursor + count) % max_hosts
        return hosts

    async def _scan(self, hosts: list[int]) -> None:
        """Read the ring sectors, then the boxes, of ``hosts`` and take their requests."""
        failed = await self._inbox.read_rings(hosts)
        failed |= await self._inbox.read_boxes(hosts)
        self._rescan |= failed
        for host in hosts:
            self._take(host)

    def _take(self, host: int) -> None:
        for slot, generation, item in self._inbox.requests(host):
            self._consider(_Key(host, slot), generation, item)

    def _consider(self, key: _Key, generation: int, item: Request | MalformedSlot) -> None:
        ident = (generation, item.request_id)
        running = self._inflight.get(key)
        if running is not None:
            if running != ident:
                self._newer_seen.add(key)
            return
        done = self._boxes.answered(key.host, key.slot)
        if done is not None and (done.generation, done.request_id) == ident:
            self.counters.duplicates += 1
            return
        if not self._accepting or self._tg is None:
            return
        self.counters.received += 1
        self._watch.mark_active(key.host, self._clock.now())
        self._inflight[key] = ident
        self._tg.start_soon(self._serve, key, generation, item)

    # Serving.

    def _rescan_later(self, host: int) -> None:
        self._rescan.add(host)

    async def _serve(self, key: _Key, generation: int, item: Request | MalformedSlot) -> None:
        bound = log.bind(host_id=key.host, request_id=item.request_id)
        try:
            reply = await self._decide(key, generation, item)
            if reply is not None and await self._boxes.put(key.host, key.slot, reply):
                bound.info("replied", status=reply.status.name, size=reply.size,
                           reason=reply.text or None)
        except NotSpmError as err:
            self._lose(err)
        finally:
            del self._inflight[key]
            if key in self._newer_seen:
                self._newer_seen.discard(key)
                self._rescan.add(key.host)

    async def _decide(
        self, key: _Key, generation: int, item: Request | MalformedSlot
    ) -> Reply | None:
        """The reply to send, or None when the request is handed back (stepping down)."""
        def answer(status: Status, size: int = 0, reason: ReasonCode = ReasonCode.NONE,
                   text: str = "") -> Reply:
            return Reply(item.request_id, generation, status, size, reason, text)

        if isinstance(item, MalformedSlot):
            return answer(Status.REJECTED, reason=ReasonCode.MALFORMED, text=item.problem)
        rejection = check_request(item, self._pool_vgs, self._settings.max_request_bytes)
        if rejection is not None:
            return answer(Status.REJECTED, reason=rejection.reason, text=rejection.text)
        verdict = (await self._executor.execute(key.host, generation, item)
                   if self._accepting else None)
        if verdict is None:
            self.counters.handed_back += 1
            return None
        return answer(verdict.status, verdict.size, verdict.reason, verdict.text)
