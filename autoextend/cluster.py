"""Multi-host membership for one host: lease, SPM candidacy and the host mailbox.

Every host runs the same thing (``service.extender = "mailbox"``)::

    ClusterAgent.run
    └── lease.joined()                 host id (delta lease) acquired and renewed
        ├── HostMailbox.run            this host's requests to the SPM
        ├── InUsePublisher.run         this host's open pool volumes, every 2 s (issue 27)
        ├── SummaryPublisher.run       this host's summary for ``pool status`` (issue 33)
        └── candidacy loop             wait for the SPM lease, then, inside its scope:
            └── SpmMailServer.run      validate, extend (writer gated by the SPM term), reply

Invariants:

* The SPM mail server and its volume writer exist only inside ``lease.spm()``; the writer
  checks the term before every metadata change, and the term's scope is cancelled before
  the lease could expire (self-fencing, see ``autoextend/lease/README.md``).
* The SPM judges every reduce by every live host's in-use record (``spm/inusegate.py``):
  the agent's publisher writes this host's, and its SPM term reads them all.
* Losing or giving up the role never stops the host side: requests stay in this host's
  mailbox and the next SPM serves them.
* An I/O error while joining (the first lease or mailbox I/O) does not end the agent: it is
  logged (a warning the first time), counted (``join_failures``) and the join is tried again
  with backoff (the lease's io_timeout, doubling up to six times that). What is not an I/O
  error (an unformatted area, a busy host id) still ends it: the environment must change.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
from anyio.abc import TaskStatus

from autoextend import startup
from autoextend.backoff import backoff
from autoextend.checks import ALL_ON, Checks
from autoextend.clock import Clock
from autoextend.directio import open_storage
from autoextend.errors import AutoextendError, ConfigError, NotSpmError, StartupError
from autoextend.lease.config import LeaseSettings
from autoextend.lease.engine import LeaseEngine, SpmLease, make_engine
from autoextend.lease.engine_record import check_engine
from autoextend.lease.liveness import HostState
from autoextend.logs import get_logger
from autoextend.metadata_area import AreaTooSmall, check_journal_fits
from autoextend.monitor.protocols import ExtendOutcome, RefreshGate
from autoextend.sectors import SectorStorage, StorageError
from autoextend.spm.config import MailboxSettings, journal_base, mailbox_base
from autoextend.spm.extender import MailboxExtender
from autoextend.spm.handoffio import StorageHandoff
from autoextend.spm.host import HostMailbox
from autoextend.spm.inusegate import InUseGate, lease_states
from autoextend.spm.inusepub import DeviceSource, InUsePublisher, InUseSource
from autoextend.spm.journalring import JournalCounters, JournalWriter, Ring
from autoextend.spm.layout import MailboxLayout
from autoextend.spm.server import SpmMailServer
from autoextend.spm.summary import HostFacts
from autoextend.spm.summarypub import FactsSource, SummaryPublisher
from autoextend.validation import cluster_rule
from autoextend.volumes import SpmAuthority, VolumeBackend, VolumeRef

if TYPE_CHECKING:
    from autoextend.lvm.reserve import FreeSpaceBackend

#: Builds the SPM's volume backend for one term (the term is the writer's authority).
SpmBackendFactory = Callable[[SpmAuthority], "FreeSpaceBackend"]


class ClusterAgent:
    """``lease``/``mailbox``: their config sections; ``vgs``: the pool's VGs (``[lvm] vgs``).
    Refuses sections it cannot run with, by the one rule ``run`` and ``config check`` apply
    (:func:`autoextend.validation.cluster_rule`)."""

    def __init__(
        self,
        lease: LeaseSettings,
        mailbox: MailboxSettings,
        vgs: tuple[str, ...],
        host_backend: VolumeBackend,
        spm_backend: SpmBackendFactory,
        clock: Clock,
        *,
        checks: Checks = ALL_ON,
        in_use: InUseSource | None = None,
        summary: FactsSource | None = None,
        handoff: StorageHandoff | None = None,
        devices: DeviceSource | None = None,
    ) -> None:
        """``handoff``: the pause claims this host's in-use record carries and the reads of
        the others' (``spm/handoffio.py``), bound once joined; None: no claims.
        ``in_use``: this host's open pool volumes (the service's: the monitor's drives
        and the holders scan); None publishes none (a test's agent that runs no guests).
        ``summary``: this host's facts for its summary record (``pool status``); None
        publishes an empty summary. ``devices``: this host's view of the pool's PVs for
        its in-use record (GROW-PV waits for it, ``spm/devicegate.py``); None publishes
        none."""
        found = list(cluster_rule(lease, mailbox, vgs))
        if found:
            raise ConfigError("<settings>", found)
        self.lease_config = lease
        self.mailbox_config = mailbox
        self.vgs = vgs
        self.host_backend = host_backend
        self.spm_backend = spm_backend
        self.clock = clock
        self.checks = checks  # for the lease engine and the host mailbox (autoextend/checks.py)
        self.host_id = lease.host_id
        self.log = get_logger("cluster", host_id=self.host_id)
        self.storage: SectorStorage | None = None
        self.lease: LeaseEngine | None = None
        self.mailbox: HostMailbox | None = None
        self.server: SpmMailServer | None = None
        self.in_use_source: InUseSource = in_use or _nothing_in_use
        self.device_source = devices
        self.publisher: InUsePublisher | None = None
        self.summary_source: FactsSource = summary or HostFacts
        self.summary: SummaryPublisher | None = None
        self.handoff = handoff
        self.terms = 0
        self.join_failures = 0  # I/O errors while joining (each retried with backoff)
        self.journal = JournalCounters()  # every term's journal writer counts here
        self.journal_on = False  # the SPM keeps the journal ([mailbox] journal, area size)
        self._joined: anyio.Event | None = None  # made inside the event loop, on first use

    def extender(self) -> AgentExtender:
        """This host's extender; usable before :meth:`run` (requests wait until joined)."""
        return AgentExtender(self)

    def _joined_event(self) -> anyio.Event:
        if self._joined is None:
            self._joined = anyio.Event()
        return self._joined

    async def wait_joined(self) -> HostMailbox:
        """The host mailbox, once this host has joined the pool and its mailbox runs."""
        await self._joined_event().wait()
        if self.mailbox is None:
            raise AutoextendError("the cluster agent is not running")
        return self.mailbox

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Join, start the mailbox and the candidacy loop; ``started()`` once joined."""
        lease_cfg = self.lease_config
        path = lease_cfg.path  # mailbox.path is empty or the same (validation)
        await anyio.to_thread.run_sync(startup.check_metadata_area, path)
        storage = await open_storage(path, lease_cfg.sector_size, lease_cfg.io_timeout_s)
        try:
            await self.run_on(storage, task_status=task_status)
        finally:
            with anyio.CancelScope(shield=True):
                await storage.close()

    async def run_on(
        self, storage: SectorStorage, *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """:meth:`run` on an opened metadata area (tests give it a fault-injecting one)."""
        lease_cfg = self.lease_config
        path = lease_cfg.path
        self.storage = storage
        startup.check_lease_area_fits(path, lease_cfg.offset, storage.size)
        journal = self._journal_ring(storage.size)
        layout = MailboxLayout(
            mailbox_base(self.mailbox_config, lease_cfg.offset),
            storage.sector_size,
            self.mailbox_config.max_hosts,
        )
        while True:
            try:
                # self.lease_config: a reload's spm_priority holds for a retried join too
                lease = make_engine(self.lease_config, storage, self.clock, self.checks)
            except ValueError as exc:  # geometry of the detected sector size (4 KiB)
                raise StartupError(f"lease area on {path}", str(exc)) from None
            self.lease = lease
            self.mailbox = HostMailbox(
                storage, layout, self.host_id, self.mailbox_config, self.clock,
                checks=self.checks,
            )
            try:
                await check_engine(storage, lease_cfg)  # its read is the join's first I/O
                async with lease.joined(), anyio.create_task_group() as tg:
                    await tg.start(self.mailbox.run)
                    self.publisher = InUsePublisher(
                        storage, layout, self.host_id, self.in_use_source,
                        partial(self._own_generation, lease), self.clock,
                        pause_claims=None if self.handoff is None else self.handoff.claims,
                        devices=self.device_source)
                    if self.handoff is not None:
                        self.handoff.bind(storage, layout, self.publisher)
                    await tg.start(self.publisher.run)
                    self.summary = SummaryPublisher(
                        storage, layout, self.host_id, lease_cfg.engine, self.summary_source,
                        lease_states(lease.host_states), self.clock)
                    await tg.start(self.summary.run)
                    tg.start_soon(self._candidacy, lease, storage, layout, journal)
                    self.log.info("joined the pool", host_name=lease.host_name,
                                  join_failures=self.join_failures,
                                  spm_priority=self.lease_config.spm_priority)
                    self._joined_event().set()
                    task_status.started()
                return
            except* StorageError as group:  # from the join, or from the mailbox's start
                if self._joined_event().is_set():
                    raise  # after the join: not a join failure
                first = group.exceptions[0]
                self.join_failures += 1
                delay = backoff(self.join_failures, lease_cfg.io_timeout_s,
                                6 * lease_cfg.io_timeout_s)
                report = self.log.warning if self.join_failures == 1 else self.log.debug
                report("joining the pool failed on an I/O error; retrying", error=str(first),
                       attempts=self.join_failures, retry_in_s=round(delay, 3))
                await self.clock.sleep(delay)

    def _journal_ring(self, storage_size: int) -> Ring | None:
        """The journal's ring when ``[mailbox] journal`` is on; StartupError when the
        metadata area is too small for it."""
        mode = self.mailbox_config.journal
        if mode is False:
            return None
        base = journal_base(self.mailbox_config, self.lease_config.offset)
        try:
            check_journal_fits(self.lease_config.path, base, storage_size)
        except AreaTooSmall as exc:
            if mode == "auto":
                # Debug, not info: a start-up that fails next must say so in one line.
                self.log.debug("no journal of metadata changes: the metadata area is too "
                               "small for one ([mailbox] journal = \"auto\")", detail=str(exc))
                return None
            raise StartupError("mailbox.journal", str(exc)) from None
        self.journal_on = True
        return Ring(base)

    async def _candidacy(
        self, lease: LeaseEngine, storage: SectorStorage, layout: MailboxLayout,
        ring: Ring | None = None,
    ) -> None:
        """Forever: wait for the SPM lease, serve as SPM while it is valid, start over."""
        while True:
            async with lease.spm() as term:
                self.terms += 1
                backend = self.spm_backend(term)
                self.log.info("this host is SPM", lver=term.lver)
                try:
                    await self._serve_term(lease, storage, layout, ring, term, backend)
                finally:
                    with anyio.CancelScope(shield=True):
                        await backend.aclose()
            self.log.info("no longer SPM")
            await self.clock.sleep(0)  # a checkpoint between terms

    async def _serve_term(
        self, lease: LeaseEngine, storage: SectorStorage, layout: MailboxLayout,
        ring: Ring | None, term: SpmLease, backend: FreeSpaceBackend,
    ) -> None:
        """Serve the mailbox for one term. A start-up read that fails (the metadata area
        erroring just as this host took the role) is retried with a backoff while the term
        holds: never a crash of the agent. The lease bounds it: renewals that fail too end
        the term, and the term's end cancels this."""
        failures = 0
        in_use = InUseGate(storage, layout, lambda: self._host_states(lease), self.clock)
        try:
            while True:
                journal = None if ring is None else JournalWriter(
                    storage, ring, term, lver=term.lver, spm_host=self.host_id,
                    counters=self.journal)
                server = SpmMailServer(
                    storage, backend, self.vgs, layout=layout, authority=term,
                    settings=self.mailbox_config, clock=self.clock, epoch=term.lver,
                    live_hosts=lambda: self._live_hosts(lease),
                    in_use=in_use,
                    journal=journal,
                )
                self.server = server
                try:
                    await server.run()
                    return
                except NotSpmError as exc:
                    self.log.warning("SPM role ended", reason=str(exc))
                    return
                except StorageError as exc:
                    failures += 1
                    delay = backoff(failures, self.lease_config.io_timeout_s,
                                    6 * self.lease_config.io_timeout_s)
                    report = self.log.warning if failures == 1 else self.log.debug
                    report("SPM mail server could not start on an I/O error; retrying",
                           error=str(exc), attempts=failures, retry_in_s=round(delay, 3),
                           lver=term.lver)
                finally:
                    self.server = None
                await self.clock.sleep(delay)
        finally:
            in_use.end()

    def _live_hosts(self, lease: LeaseEngine) -> set[int]:
        """Host ids whose mail the SPM reads at its fast cadence: every host whose delta
        lease is not FREE or DEAD (alive or not known yet), and this host."""
        live = {h for h, s in lease.host_states().items()
                if s.state not in (HostState.FREE, HostState.DEAD)}
        live.add(self.host_id)
        return live

    def _own_generation(self, lease: LeaseEngine) -> int:
        own = lease.host_states().get(self.host_id)
        return int(own.generation) if own is not None else 0

    def _host_states(self, lease: LeaseEngine) -> dict[int, tuple[str, int]]:
        """Every host the lease knows, and this one (live: it runs this code)."""
        states = dict(lease_states(lease.host_states)())
        _, generation = states.get(self.host_id, ("live", 0))
        states[self.host_id] = ("live", generation)
        return states

    def set_spm_priority(self, lease: LeaseSettings) -> None:
        """A reload's ``[lease] spm_priority`` (the only lease key a reload applies): kept for
        the next engine (a rejoin) and given to the running one."""
        self.lease_config = self.lease_config.model_copy(
            update={"spm_priority": lease.spm_priority})
        if self.lease is not None:
            self.lease.set_spm_priority(lease.spm_priority)

    async def step_down(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """Finish or hand back the requests in flight, then release the SPM lease."""
        if self.lease is None or self.lease.term is None:
            raise AutoextendError(f"host {self.host_id} is not the SPM")
        lver = self.lease.term.lver
        server = self.server
        if server is not None:
            await server.step_down(timeout_s)
        self.lease.step_down()
        handed_back = server.counters.handed_back if server is not None else 0
        self.log.info("stepped down as SPM", lver=lver, handed_back=handed_back)
        return {"stepped_down": True, "lver": lver, "host_id": self.host_id,
                "handed_back": handed_back}

    def status(self) -> dict[str, Any]:
        lease = self.lease
        spm = lease.current_spm() if lease is not None else None
        age = lease.renewal_age() if lease is not None else None
        health = "not joined"
        if lease is not None and age is not None:
            health = "ok" if age < lease.timeouts.renewal_warn else "renewals failing"
        hosts = (
            {
                str(h): {"state": s.state.value, "name": s.host_name,
                         "silent_s": round(s.silent_s, 3)}
                for h, s in lease.host_states().items()
            }
            if lease is not None else {}
        )
        server = self.server
        return {
            "host_id": self.host_id,
            "engine": self.lease_config.engine,
            "spm_priority": self.lease_config.spm_priority,
            "spm_host_id": spm[0] if spm else None,
            "spm_lver": spm[1] if spm else None,
            "is_spm": bool(lease is not None and lease.term is not None),
            "lease_health": health,
            "last_renewal_age_s": None if age is None else round(age, 3),
            "hosts": hosts,
            "terms_held": self.terms,
            "join_failures": self.join_failures,
            "mailbox": dict(vars(self.mailbox.counters)) if self.mailbox is not None else {},
            "in_use": ({"seq": self.publisher.seq, "published": self.publisher.published,
                        "failures": self.publisher.failures,
                        "volumes": len(self.publisher.last.hashes)
                        if self.publisher.last is not None else None}
                       if self.publisher is not None else None),
            "server": dict(vars(server.counters)) if server is not None else None,
            "journal": dict(vars(self.journal)) if self.journal_on else None,
            "summary_record": ({"seq": self.summary.seq, "writes": self.summary.writes,
                                "failures": self.summary.failures}
                               if self.summary is not None else None),
        }


async def _nothing_in_use() -> list[str]:
    return []


class AgentExtender:
    """The monitor's extender in mailbox mode, built before the agent runs: each request
    waits until the host has joined the pool, then goes through the host mailbox."""

    def __init__(self, agent: ClusterAgent) -> None:
        self._agent = agent
        self._inner: MailboxExtender | None = None

    async def extend(
        self, volume: VolumeRef, size: int, *, refresh: bool = True,
        may_refresh: RefreshGate | None = None,
    ) -> ExtendOutcome:
        if self._inner is None:
            mailbox = await self._agent.wait_joined()
            self._inner = MailboxExtender(mailbox, self._agent.host_backend,
                                          clock=self._agent.clock)
        if not refresh:
            return await self._inner.extend(volume, size, refresh=False)
        return await self._inner.extend(volume, size, may_refresh=may_refresh)
