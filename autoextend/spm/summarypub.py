"""The host side of the summary records: write this host's summary when it changes.

:class:`SummaryPublisher` runs inside the host's membership (``cluster.py``, next to the
in-use publisher). Every :data:`LOOK_S` it builds the record (``summary.py``) from its
source (the service's VMs, drives, extensions and pauses: ``hostsummary.py``) and the
lease's view of the peers, and writes it when its content changed, or when
:data:`REFRESH_S` passed since the last write, if the write budget allows.

**I/O budget (derivation).** Writes are paced by token buckets: a bucket holds at most
``burst`` tokens, gains one every ``refill_s`` seconds, and a write takes one. Every write
takes from the main bucket (:data:`BURST` 3, :data:`REFILL_S` 15 s); a write whose only
reason is a change in the lease's view of the peers (a host found failing or dead, or back)
may take from a second, smaller bucket when the main one is empty (:data:`PEER_BURST` 2,
:data:`PEER_REFILL_S` 60 s), so a stream of extensions never holds back the news of a dead
host. In any ``L`` seconds a host writes at most ``3 + L/15 + 2 + L/60 = 5 + L/12``
sectors: 0.083 sector writes/s in the long run (one per 12 s), 55 in a 10-minute window
(one per 10.9 s), below one sector write per 10 s for any window past 300 s. A quiet host
writes one sector every ``REFRESH_S`` (60 s). A stream of changes (extensions every
second) is written every 15 s, each write carrying the latest content. 250 hosts: at most
21 sector writes/s on the LUN, ~10.7 KiB/s at 512 B sectors; ``pool status`` reads
``max_hosts`` sectors a few times.

At start it reads its own record and continues from its ``seq``. A failed write or a
failing source is logged once (then counted) and retried at the next look; nothing here
stops the host, and nothing else reads these records but ``pool status``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from autoextend import logs
from autoextend.clock import Clock
from autoextend.sectors import SectorStorage, StorageError
from autoextend.spm import summary
from autoextend.spm.errors import CorruptSector
from autoextend.spm.layout import MailboxLayout

log = logs.get_logger("spm.summary")

LOOK_S = 1.0
REFRESH_S = 60.0
BURST = 3
REFILL_S = 15.0
PEER_BURST = 2
PEER_REFILL_S = 60.0

# The service's own facts (may raise: logged, nothing written).
FactsSource = Callable[[], summary.HostFacts]
# The lease's view: {host: (state name, generation)}, every host it knows.
LeaseView = Callable[[], Mapping[int, tuple[str, int]]]


@dataclass
class WriteBudget:
    """A token bucket (pure): ``burst`` tokens at most, one more every ``refill_s``."""

    burst: int = BURST
    refill_s: float = REFILL_S
    tokens: float = float(BURST)
    at: float | None = None

    def _fill(self, now: float) -> None:
        if self.at is not None and now > self.at:
            self.tokens = min(float(self.burst), self.tokens + (now - self.at) / self.refill_s)
        self.at = now if self.at is None else max(self.at, now)

    def take(self, now: float) -> bool:
        """Take a token if one is there (then the write may go)."""
        self._fill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class SummaryPublisher:
    def __init__(self, storage: SectorStorage, layout: MailboxLayout, host_id: int,
                 engine: str, source: FactsSource, lease_view: LeaseView, clock: Clock, *,
                 look_s: float = LOOK_S, refresh_s: float = REFRESH_S,
                 budget: WriteBudget | None = None,
                 peer_budget: WriteBudget | None = None,
                 wall_us: Callable[[], int] = lambda: int(time.time() * 1e6)) -> None:
        layout.check_host(host_id)
        self._storage = storage
        self._layout = layout
        self.host_id = host_id
        self.engine = engine
        self._source = source
        self._lease_view = lease_view
        self._clock = clock
        self.look_s = look_s
        self.refresh_s = refresh_s
        self.budget = budget or WriteBudget()
        self.peer_budget = peer_budget or WriteBudget(PEER_BURST, PEER_REFILL_S,
                                                      float(PEER_BURST))
        self._wall_us = wall_us
        self.seq = 0
        self.writes = 0
        self.failures = 0
        self.last: summary.SummaryRecord | None = None
        self.last_write_at: float | None = None
        self._repeats = logs.Repeats(log)

    async def start(self) -> None:
        """Continue from the ``seq`` on disk (an unreadable record: from a high one)."""
        offset = self._layout.summary_offset(self.host_id)
        raw = await self._storage.read(offset, self._storage.sector_size)
        try:
            old = summary.decode(raw, self.host_id)
        except CorruptSector:
            old = None
            self.seq = int(self._wall_us())
        if old is not None:
            self.seq = old.seq

    def build(self) -> summary.SummaryRecord | None:
        """The record now (its ``seq`` one past the last written), or None when the source
        failed."""
        try:
            facts = self._source()
            view = dict(self._lease_view())
        except Exception as exc:  # a failing source must not stop the host
            self.failures += 1
            self._repeats.warning("collecting this host's summary failed",
                                  error=str(exc) or type(exc).__name__, host_id=self.host_id)
            return None
        _, generation = view.get(self.host_id, ("live", 0))
        return summary.make_record(self.host_id, self.engine, generation, self.seq + 1,
                                   self._wall_us(), facts, view)

    def due(self, record: summary.SummaryRecord, now: float) -> bool:
        """Changed, or not written for ``refresh_s`` (the budget decides the rest)."""
        if self.last is None or self.last_write_at is None:
            return True
        return (record.content() != self.last.content()
                or now - self.last_write_at >= self.refresh_s)

    def _allowed(self, record: summary.SummaryRecord, now: float) -> bool:
        if self.budget.take(now):
            return True
        peers_changed = self.last is not None and (record.peers, record.peers_cut) != (
            self.last.peers, self.last.peers_cut)
        return peers_changed and self.peer_budget.take(now)

    async def look(self) -> bool:
        """One look: build, and write if due and the budget allows. True if written."""
        record = self.build()
        now = self._clock.now()
        if record is None or not self.due(record, now) or not self._allowed(record, now):
            return False
        try:
            await self._storage.write(self._layout.summary_offset(self.host_id),
                                      summary.encode(record, self._storage.sector_size))
        except StorageError as exc:
            self.failures += 1
            self._repeats.warning("writing the summary record failed", error=str(exc),
                                  host_id=self.host_id)
            return False
        self._repeats.clear("writing the summary record failed")
        self._repeats.clear("collecting this host's summary failed")
        self.seq = record.seq
        self.last, self.last_write_at = record, now
        self.writes += 1
        return True

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Look now, then every ``look_s`` (``started()`` after the first look)."""
        try:
            await self.start()
        except StorageError as exc:
            self.seq = int(self._wall_us())
            log.warning("reading this host's summary record failed; starting from a high seq",
                        error=str(exc), host_id=self.host_id)
        await self.look()
        task_status.started()
        while True:
            await self._clock.sleep(self.look_s)
            await self.look()
