"""LeaseService: the host id lease, its renewal task, and the SPM lease as a fenced scope.

    lease = LeaseService(storage, settings, clock)
    async with lease.joined():              # host id acquired, renewal task running
        async with lease.spm() as term:     # blocks until this host is SPM
            term.check()                    # NotSpmError unless still valid (no I/O)
            ...                             # cancelled before the lease could be lost

The body of ``spm()`` runs in a cancel scope that is cancelled when the term ends: at the
lease expiry (8T after the start of the last successful renewal, on our monotonic clock),
when the host id is lost, or on :meth:`LeaseService.step_down`. Leaving the body releases
the lease so another host takes over within one acquire poll. ``term.check()`` fails from the
expiry instant on, even if the cancellation is delivered late.
"""

from __future__ import annotations

import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from autoextend.checks import ALL_ON, Checks
from autoextend.clock import Clock
from autoextend.lease.config import LeaseSettings
from autoextend.lease.delta import DeltaLease
from autoextend.lease.errors import HostIdLost, LeaseError
from autoextend.lease.format import sectors, unpack_leader
from autoextend.lease.layout import LeaseLayout
from autoextend.lease.liveness import HostMonitor, HostState, HostStatus
from autoextend.lease.paxos import PaxosLease
from autoextend.lease.priority import (
    NEVER,
    POLLS_PER_LEVEL,
    Priority,
    parse_priority,
    yield_window,
)
from autoextend.lease.term import Term, TermHolder
from autoextend.lease.timeouts import LeaseTimeouts, lease_timeouts
from autoextend.lease.watchdog import NullWatchdog, Watchdog
from autoextend.logs import Repeats, get_logger
from autoextend.sectors import SectorStorage, StorageError


class SpmTerm(Term):
    """One tenure as SPM: lease version ``lver`` held by ``host_id``, under the host id
    lease of ``generation`` (the term's expiry is that lease's)."""

    def __init__(self, service: LeaseService, lver: int, generation: int) -> None:
        super().__init__(service.host_id, lver, lambda: service.delta.expiry, service.clock,
                         service.checks)
        self.generation = generation


class _Guard:
    """The host id lease as a ballot sees it (paxos.BallotGuard)."""

    def __init__(self, service: LeaseService) -> None:
        self._service = service

    def valid_until(self) -> float:
        delta = self._service.delta
        return delta.expiry if delta.record is not None else 0.0

    def arm(self, expiry: float | None) -> None:
        self._service._arm_for_ballot(expiry)

    async def gone(self, hosts: set[int]) -> set[int]:
        return await self._service._hosts_gone(hosts)


@dataclass
class LeaseStats:
    renewals: int = 0
    renewal_failures: int = 0
    rejoins: int = 0
    acquisitions: int = 0
    fenced: int = 0
    yielded: int = 0   # free instances this host first left to a higher-priority host


class LeaseService(TermHolder[SpmTerm]):
    def __init__(
        self,
        storage: SectorStorage,
        settings: LeaseSettings,
        clock: Clock,
        *,
        watchdog: Watchdog | None = None,
        rng: random.Random | None = None,
        checks: Checks = ALL_ON,
    ) -> None:
        if settings.host_id < 1:
            raise LeaseError("lease.host_id is not configured (1..max_hosts)")
        self.settings = settings
        # checks.fresh_owner_read protects the takeover (_owner_gone: a free slot or another
        # generation is trusted only from a read issued after the leader read); its terms
        # get checks.term_check. Only the simulation's mutants pass either off.
        self.checks = checks
        self.host_id = settings.host_id
        self.host_name = settings.host_name or socket.gethostname()
        self.clock = clock
        self.timeouts: LeaseTimeouts = lease_timeouts(
            settings.io_timeout_s, settings.watchdog_fire_timeout_s, settings.acquire_poll_s
        )
        self.layout = LeaseLayout(settings.offset, storage.sector_size, settings.max_hosts)
        self.monitor = HostMonitor(self.timeouts.host_fail, self.timeouts.host_dead)
        self.delta = DeltaLease(
            storage, self.layout, self.host_id, self.host_name, self.timeouts, clock, self.monitor,
            rng,
        )
        self.paxos = PaxosLease(
            storage, self.layout, self.host_id, self.timeouts, clock, rng, guard=_Guard(self)
        )
        self._ballot_armed = False
        # [lease] spm_priority (priority.py): published in our host id record, and the yield
        # before a ballot; _free_since: (lver, when we first saw that instance free to run).
        self.spm_priority: Priority = settings.spm_priority
        self.delta.spm_priority = self.spm_priority
        self._priority_changed = anyio.Event()
        self._free_since: tuple[int, float] | None = None
        self.watchdog = watchdog or NullWatchdog()
        self.stats = LeaseStats()
        self.storage = storage
        self._joined = anyio.Event()
        self._term: SpmTerm | None = None
        self._hold_off_until = 0.0
        self._rejoin_not_before = 0.0
        self.log = get_logger("lease", host_id=self.host_id)
        # Renewal and rejoin retry every renewal_retry (0.5 s): one line per cause, then a count.
        self.repeats = Repeats(self.log, clock.now)

    # ---- host id -------------------------------------------------------------------------

    @asynccontextmanager
    async def joined(self) -> AsyncIterator[LeaseService]:
        """Acquire the host id lease and keep renewing it while the body runs."""
        await self.delta.acquire()
        self._joined.set()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self._renewal_loop)
                try:
                    yield self
                finally:
                    tg.cancel_scope.cancel()
        finally:
            self.repeats.clear_all()
            self.paxos.repeats.clear_all()
            if self._term is not None:
                self._term.end("leaving")
            with anyio.CancelScope(shield=True), anyio.move_on_after(
                2 * self.timeouts.io_timeout
            ):
                try:
                    await self.delta.release()
                except StorageError as err:
                    self.log.warning("host id release failed", error=str(err))
            self._joined = anyio.Event()

    def _lost(self, reason: str, expiry: float) -> None:
        self.log.error("host id lost", reason=reason)
        self._joined = anyio.Event()
        # Others may take our old generation's SPM lease over as soon as they see a new
        # generation, so rejoin only once the old lease is over for them anyway (expiry + W)
        # and our SPM body has exited.
        self._rejoin_not_before = expiry + self.timeouts.watchdog_fire
        if self._term is not None and self._term.enforced:  # (the term-check mutant: never)
            self.stats.fenced += 1
            self._term.end(f"host id lost: {reason}")

    async def _renewal_loop(self, *, task_status: TaskStatus[None]) -> None:
        t = self.timeouts
        task_status.started()
        next_at = self.delta.last_renewal + t.renewal_interval
        while True:
            await self.clock.sleep(next_at - self.clock.now())
            if self.delta.record is None:
                if self._term is not None or self.clock.now() < self._rejoin_not_before:
                    next_at = max(
                        self._rejoin_not_before, self.clock.now() + self.timeouts.renewal_retry
                    )
                    continue
                try:
                    await self.delta.acquire()
                    self.stats.rejoins += 1
                    self._joined.set()
                    self.repeats.clear("host id rejoin failed")
                    next_at = self.delta.last_renewal + t.renewal_interval
                except (LeaseError, StorageError) as err:
                    self.repeats.warning("host id rejoin failed", error=str(err))
                    next_at = self.clock.now() + t.renewal_retry
                continue
            expiry = self.delta.expiry
            try:
                await self.delta.renew()
            except HostIdLost as err:
                self.repeats.clear("host id renewal failed", "the host id was lost")
                self._lost(err.reason, expiry)
                next_at = self.clock.now()
                continue
            except (StorageError, LeaseError) as err:
                self.stats.renewal_failures += 1
                age = self.clock.now() - self.delta.last_renewal
                level = "error" if age >= t.renewal_warn else "warning"
                self.repeats.report(level, "host id renewal failed", error=str(err),
                                    duration_s=age)
                next_at = self.clock.now() + t.renewal_retry
                continue
            self.repeats.clear("host id renewal failed")
            self.stats.renewals += 1
            if (self._term is not None and self._term.ended is None) or self._ballot_armed:
                self.watchdog.update(self.delta.expiry)
            next_at = self.delta.last_renewal + t.renewal_interval

    # ---- SPM -----------------------------------------------------------------------------

    async def _owner_gone(self, owner: int, generation: int) -> bool:
        """True if the host id lease that ``(owner, generation)`` held is provably over.

        A free slot or another generation is trusted only from a read issued after the
        caller's leader read: a cached record may predate the owner's restart, and then its
        old generation says nothing about the incarnation that holds the lease now.
        """
        if not 1 <= owner <= self.layout.max_hosts:
            return True
        cached = self.monitor.record(owner)
        if self.checks.fresh_owner_read and (
            owner not in self.monitor.peers
            or (cached is not None and (cached.free or cached.generation != generation))
            or self.monitor.needs_confirm(owner, self.clock.now())
        ):
            offset = self.layout.delta_offset(owner)
            issued = self.clock.now()
            raw = await self.storage.read(offset, self.layout.sector_size)
            self.monitor.observe(owner, raw, offset, issued, self.clock.now())
        record = self.monitor.record(owner)
        if record is not None and (record.free or record.generation != generation):
            return True
        return self.monitor.is_dead(owner)

    async def _hosts_gone(self, hosts: set[int]) -> set[int]:
        """Those of ``hosts`` whose host id slot is FREE or DEAD, from one read of the delta
        area issued now (a ballot may go past their unreadable dblocks)."""
        issued = self.clock.now()
        area = await self.storage.read(self.layout.delta_start, self.layout.delta_length)
        done = self.clock.now()
        for index, raw in enumerate(sectors(area, self.layout.sector_size)):
            host = index + 1
            self.monitor.observe(host, raw, self.layout.delta_offset(host), issued, done)
        gone: set[int] = set()
        for host in hosts:
            record = self.monitor.record(host)
            if (record is not None and record.free) or self.monitor.is_dead(host):
                gone.add(host)
        return gone

    async def _read_delta_area(self) -> None:
        """One read of every host id slot, issued now, into the monitor."""
        issued = self.clock.now()
        area = await self.storage.read(self.layout.delta_start, self.layout.delta_length)
        done = self.clock.now()
        for index, raw in enumerate(sectors(area, self.layout.sector_size)):
            host = index + 1
            self.monitor.observe(host, raw, self.layout.delta_offset(host), issued, done)
        self.monitor.area_seen = done

    # ---- SPM priority ----------------------------------------------------------------------

    def set_spm_priority(self, value: object) -> None:
        """Apply a new ``spm_priority`` (a reload): published at the next renewal, used from
        the next look at a free lease. A term in progress is kept. ValueError if invalid."""
        priority = parse_priority(value)
        if priority == self.spm_priority:
            return
        self.log.info("SPM priority changed", old=self.spm_priority, new=priority)
        self.spm_priority = priority
        self.delta.spm_priority = priority
        self._priority_changed.set()
        self._priority_changed = anyio.Event()

    def _peer_priorities(self, now: float) -> list[tuple[bool, Priority | None]]:
        """Every other host: may it contend (held, readable, LIVE or UNKNOWN), and the
        priority its record publishes."""
        out: list[tuple[bool, Priority | None]] = []
        for host, view in self.monitor.peers.items():
            record = view.record
            if host == self.host_id or record is None or record.free:
                continue
            state = self.monitor.status(host, now).state
            out.append((state in (HostState.LIVE, HostState.UNKNOWN), record.spm_priority))
        return out

    async def _defer(self, lver: int) -> float:
        """Seconds to yield before a ballot for instance ``lver`` (priority.py; 0: go)."""
        if self.spm_priority == NEVER:
            return self.timeouts.acquire_poll
        if self._free_since is None or self._free_since[0] != lver:
            self._free_since = (lver, self.clock.now())
            if self.monitor.area_seen is None:  # just joined: no renewal has read the peers
                await self._read_delta_area()
            fresh = True
        else:
            fresh = False
        now = self.clock.now()
        window = yield_window(self.spm_priority, self._peer_priorities(now),
                              self.timeouts.acquire_poll)
        remaining = self._free_since[1] + window - now
        if remaining > 0 and fresh:
            self.stats.yielded += 1
            self.log.info("SPM lease free: yielding to higher-priority hosts", lver=lver,
                          priority=self.spm_priority, duration_s=round(window, 3))
        return max(0.0, remaining)

    def _arm_for_ballot(self, expiry: float | None) -> None:
        self._ballot_armed = expiry is not None
        if self._term is None:
            self.watchdog.update(expiry)

    async def _acquire(self) -> tuple[int, int]:
        while True:
            await self._joined.wait()
            await self.clock.sleep(self._hold_off_until - self.clock.now())
            if self.spm_priority == NEVER:  # never contends: wait for a reload to change it
                await self._priority_changed.wait()
                continue
            record = self.delta.record
            if record is None:
                continue
            try:
                lver = await self.paxos.acquire(record.generation, self._owner_gone,
                                                self._defer)
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._abandon_acquire(record.generation)
                raise
            current = self.delta.record
            if self.delta.held and current is not None and current.generation == record.generation:
                return lver, record.generation
            await self._release(lver, record.generation)

    async def _abandon_acquire(self, generation: int) -> None:
        """Cancelled mid-acquire: a ballot may have decided for us; release it if so."""
        with anyio.move_on_after(4 * self.timeouts.io_timeout):
            try:
                area = await self.paxos.read_area()
            except StorageError:
                return
            leader = area.leader
            if leader is not None and leader.owner_id == self.host_id and not leader.free:
                await self._release(leader.lver, generation)

    async def _release(self, lver: int, generation: int) -> None:
        with anyio.move_on_after(4 * self.timeouts.io_timeout):
            try:
                await self.paxos.release(lver, generation)
            except StorageError as err:
                self.repeats.warning("SPM lease release failed", lver=lver, error=str(err))

    # TermHolder hooks: spm(), step_down() and term are in autoextend.lease.term.

    async def _start_term(self) -> SpmTerm:
        lver, generation = await self._acquire()
        term = SpmTerm(self, lver, generation)
        self._term = term
        self.stats.acquisitions += 1
        self.watchdog.update(term.expiry)
        return term

    async def _finish_term(self, term: SpmTerm) -> None:
        # _term is cleared before the release: a host id loss during the release no longer
        # counts as a fenced term, and the renewal loop may rejoin without waiting for it.
        self._term = None
        self.watchdog.update(None)
        await self._release(term.lver, term.generation)

    def _fence_at_expiry(self, term: SpmTerm) -> None:
        self.stats.fenced += 1
        self.log.error("SPM term fenced", lver=term.lver, reason="lease may expire")
        term.end("lease may have expired (not renewed in time)")

    def _default_hold_off(self) -> float:
        # Longer than a lower host's look at the free lease (one poll) plus its yield to
        # one higher level (priority.py): a step-down of the highest-priority host hands
        # the role on. With the default poll (T) this is the 4T it always was.
        return max(2 * self.timeouts.renewal_interval,
                   (POLLS_PER_LEVEL + 2) * self.timeouts.acquire_poll)

    # ---- status --------------------------------------------------------------------------

    async def read_spm(self) -> tuple[int, int] | None:
        """A fresh read of the leader record alone: no state of the contest changes (the
        paxos engine's reads keep their own order for the fresh-owner-read check)."""
        layout = self.layout
        raw = await self.storage.read(layout.leader_offset, layout.sector_size)
        leader = unpack_leader(raw, layout.leader_offset, layout.max_hosts)
        return None if leader.free else (leader.owner_id, leader.lver)

    def current_spm(self) -> tuple[int, int] | None:
        """(host_id, lver) of the SPM as last seen (our own term, else the last leader read)."""
        if self.term is not None:
            return self.host_id, self.term.lver
        leader = self.paxos.last_leader
        if leader is None or leader.free:
            return None
        return leader.owner_id, leader.lver

    def host_states(self) -> dict[int, HostStatus]:
        now = self.clock.now()
        return {host: self.monitor.status(host, now) for host in sorted(self.monitor.peers)}

    @property
    def held(self) -> bool:
        """This host's id lease is held and not past its expiry."""
        return self.delta.held

    def renewal_age(self) -> float | None:
        """Seconds since the start of our last successful renewal (None if not joined)."""
        if self.delta.record is None:
            return None
        return self.clock.now() - self.delta.last_renewal

    @property
    def record_errors(self) -> int:
        return self.monitor.bad_records + self.paxos.stats.record_errors
