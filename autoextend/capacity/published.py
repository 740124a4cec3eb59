"""Mailbox mode: the SPM publishes its VG figures (``record.py``); other hosts read them.

:class:`PublishedSource` is the watcher's source on every host of a pool. While this host
holds the SPM term it asks its own backend (``vg_figures``: ``vgs`` for lvm) and writes the
record when the figures changed or ``publish_interval_s`` passed (checking the term before
the write); otherwise it reads the record. A record whose ``seq`` has not moved for 3 x
``publish_interval_s`` is stale (no SPM, or a frozen one): the look fails (logged once by
the watcher) and the last figures stay. A record that fails its checks is counted and never
used.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from autoextend.capacity import record
from autoextend.capacity.config import CapacitySettings
from autoextend.capacity.figures import VgFigures
from autoextend.clock import Clock
from autoextend.errors import AutoextendError
from autoextend.logs import get_logger
from autoextend.sectors import SectorStorage
from autoextend.volumes import ReportsVgFigures, SpmAuthority

log = get_logger("capacity")


class FiguresUnavailable(AutoextendError):
    pass


class HoldsTerm(Protocol):
    """The lease engine as the record's writer sees it: the SPM term while this host holds
    it (checked before every write)."""

    @property
    def term(self) -> SpmAuthority | None: ...


class PoolMember(Protocol):
    """This host's membership in the pool (the cluster agent): the shared storage and the
    lease once it has joined (None before), and its host id."""

    @property
    def host_id(self) -> int: ...

    @property
    def storage(self) -> SectorStorage | None: ...

    @property
    def lease(self) -> HoldsTerm | None: ...


class PublishedSource:
    """A :class:`~autoextend.volumes.ReportsVgFigures`: this host's backend (``local``) while
    it is the SPM, which publishes them; the SPM's record otherwise."""

    def __init__(self, cluster: PoolMember, local: ReportsVgFigures,
                 settings: CapacitySettings, area_offset: int, clock: Clock) -> None:
        self.cluster = cluster
        self.local = local
        self.settings = settings
        self.area_offset = area_offset
        self.clock = clock
        self.seq = 0
        self.published: tuple[VgFigures, ...] | None = None
        self.published_at = -1e18
        self.writes = 0
        self.bad_records = 0
        self._seen: tuple[int, int, float] | None = None  # (host, seq, when it changed)

    async def vg_figures(self, vgs: Sequence[str]) -> list[VgFigures]:
        storage = self.cluster.storage
        lease = self.cluster.lease
        if storage is None or lease is None:
            raise FiguresUnavailable("this host has not joined the pool yet")
        offset = record.record_offset(self.area_offset, storage.sector_size)
        term = lease.term
        if term is not None:
            figs = await self.local.vg_figures(vgs)
            await self._publish(storage, term, offset, tuple(figs))
            return figs
        raw = await storage.read(offset, storage.sector_size)
        try:
            rec = record.decode(raw)
        except record.BadRecord as exc:
            self.bad_records += 1
            raise FiguresUnavailable(f"the SPM's VG record is unusable: {exc}") from None
        if rec is None:
            raise FiguresUnavailable("no SPM has published VG figures yet")
        now = self.clock.now()
        if self._seen is None or self._seen[:2] != (rec.host_id, rec.seq):
            self._seen = (rec.host_id, rec.seq, now)
        elif now - self._seen[2] > 3 * self.settings.publish_interval_s:
            raise FiguresUnavailable(
                f"the VG record of SPM host {rec.host_id} has not changed for"
                f" {now - self._seen[2]:.0f} s (no SPM?)")
        wanted = set(vgs)
        return [f for f in rec.figures if f.vg in wanted]

    async def _publish(self, storage: SectorStorage, term: SpmAuthority, offset: int,
                       figs: tuple[VgFigures, ...]) -> None:
        now = self.clock.now()
        if figs == self.published and now - self.published_at < self.settings.publish_interval_s:
            return
        self.seq += 1
        data = record.encode(record.VgRecord(self.cluster.host_id, self.seq, figs),
                             storage.sector_size)
        term.check()  # only the SPM of this very term writes the record
        await storage.write(offset, data)
        if self.published is None or {f.vg for f in figs} != {f.vg for f in self.published}:
            left = len(figs) - record.capacity(storage.sector_size)
            if left > 0:
                log.warning("VG record full: some VGs are not published", left_out=left)
        self.published, self.published_at = figs, now
        self.writes += 1
