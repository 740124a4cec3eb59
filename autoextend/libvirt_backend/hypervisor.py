"""The libvirt backend of the :class:`~autoextend.monitor.protocols.Hypervisor` protocol.

Structure::

    LibvirtHypervisor.run
    ├── connection loop   connect (backoff) -> subscribe -> announce every running domain
    │   └── rescan        every rescan_interval_s: list running domains (safety net)
    ├── resync task       VMs whose event did not fit in the stream: VmAppeared or VmGone
    ├── classify task     I/O error pauses of unknown cause: ask dom.state()/diskErrors()
    └── verify task       outgoing-migration marks (from events): check them with jobStats

libvirt callbacks run on the event loop thread (libvirtaio) and go to the
:class:`~autoextend.libvirt_backend.tracker.DomainTracker`, which translates them and
``send_nowait``s into the monitor's stream (a full stream marks the VM for the resync task
instead of blocking). Every libvirt call runs in a worker thread with a timeout
(:class:`~autoextend.libvirt_backend.connection.LibvirtConnection`).

After every (re)connect each running domain is announced with ``VmAppeared``: thresholds
set while libvirtd was down may be lost, and the monitor re-arms on resync. Domains that
vanished meanwhile get ``VmGone``. A VM is named by its domain name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import libvirt
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from autoextend.clock import Clock
from autoextend.errors import HypervisorError
from autoextend.libvirt_backend import backups, iotune, jobs, merges
from autoextend.libvirt_backend import events as ev
from autoextend.libvirt_backend.config import LibvirtSettings
from autoextend.libvirt_backend.connection import LibvirtConnection
from autoextend.libvirt_backend.domxml import (
    DomainXmlError,
    error_policies,
    indexed_name,
    parse_disks,
)
from autoextend.libvirt_backend.errors import (
    LibvirtBackendError,
    LibvirtCallFailed,
    LibvirtConnectFailed,
    LibvirtDisconnected,
    MalformedReply,
    VmNotFound,
)
from autoextend.libvirt_backend.eventloop import ensure_event_impl
from autoextend.libvirt_backend.migration import migration_of, outgoing
from autoextend.libvirt_backend.stats import DrivesFound, StatsError, drives_from_stats
from autoextend.libvirt_backend.tracker import DomainTracker
from autoextend.logs import get_logger
from autoextend.monitor.migration import MigrationInfo, Phase, Role
from autoextend.monitor.protocols import (
    DriveInfo,
    HypervisorEvent,
    HypervisorHealth,
    IoLimits,
    MigrationChanged,
    RunState,
    VmAppeared,
    VmGone,
    VmPaused,
)
from autoextend.volumes import VolumeRef

log = get_logger("libvirt")

STATS_FLAGS = libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_BACKING
OUTGOING = MigrationInfo(Role.SOURCE, Phase.ACTIVE)  # what an outgoing mark answers
T = TypeVar("T")


class LibvirtHypervisor:
    """Running domains of one libvirtd, watched through events and queried on demand.

    ``lookup`` maps a block device path to its volume (the volume backend's ``lookup``).
    ``watch_merges``: watch the base of a running snapshot merge (a non-active commit, see
    ``merges.py``); ``watch_backups``: watch the scratch or target of a running backup
    (``backups.py``). Only a test's negative control turns them off.
    """

    def __init__(
        self,
        settings: LibvirtSettings,
        lookup: Callable[[str], VolumeRef | None],
        clock: Clock,
        *,
        watch_merges: bool = True,
        watch_backups: bool = True,
    ) -> None:
        self.settings = settings
        self._lookup = lookup
        self._clock = clock
        self._conn: LibvirtConnection | None = None
        self._tracker = DomainTracker()
        self.connects = 0  # successful connections so far (a reconnect makes it > 1)
        #: A VM's stats or XML refused as malformed (that VM's call fails; nothing else).
        self.session_failures = 0
        self._connect_error: str | None = None  # the last failure while not connected
        self._commit_needs = jobs.CommitNeeds()
        self._backup_needs = jobs.BackupNeeds()
        self._watch_merges = watch_merges
        self._watch_backups = watch_backups
        self._intents = merges.MergeIntents()  # what prepare-merge was told, per disk
        # Domain handles by name, each with the connection it came from: a call on a known
        # domain is then one RPC, not a lookupByName first (``_on_domain``).
        self._domains: dict[str, tuple[libvirt.virConnect, libvirt.virDomain]] = {}

    # ------------------------------------------------------------------ extras

    @property
    def uri(self) -> str:
        return self.settings.uri

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed.is_set()

    def vms(self) -> set[str]:
        """Names of the running domains as last seen."""
        return set(self._tracker.active)

    def watch_problem(self) -> str | None:
        """Why nothing can be watched right now (for ``status``), or None."""
        if self.connected or self._connect_error is None:
            return None
        return f"libvirt {self.uri} cannot be reached (retrying): {self._connect_error}"

    def health(self) -> HypervisorHealth:
        """``Hypervisor.health`` (libvirt events carry no data to validate:
        ``malformed_events`` stays 0)."""
        return HypervisorHealth(self.session_failures, 0, self.watch_problem())

    # ------------------------------------------------------------------ protocol

    async def run(
        self,
        events: MemoryObjectSendStream[HypervisorEvent],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Connect, announce running domains, follow events, reconnect; until cancelled.

        ``started()`` comes after the first connection attempt: once every running domain
        was announced, or once connecting failed (it is retried in the background).

        Raises:
            EventLoopMismatch: libvirtaio is bound to another event loop.
        """
        ensure_event_impl()
        self._tracker.events = events
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._resync_loop)
            tg.start_soon(self._classify_loop)
            tg.start_soon(self._verify_loop)
            await self._connection_loop(task_status)

    async def drives(self, vm: str) -> list[DriveInfo]:
        """Fresh numbers for each writable qcow2 block disk's top image (``vda[N]``), and
        for each block job's target (a ``<mirror>``, a snapshot merge's base, a backup's
        scratch or target)."""
        stats, xml, commits, backup = await self._read(vm, commits=self._watch_merges)
        try:
            disks = parse_disks(xml)
            found = drives_from_stats(vm, stats, disks)
        except (StatsError, DomainXmlError) as err:
            self.session_failures += 1
            raise MalformedReply(vm, "domainListGetStats", str(err)) from err
        except Exception as err:  # noqa: BLE001 - a parser bug is this VM's, not the service's
            self.session_failures += 1
            log.exception("libvirt stats not understood", vm=vm)
            raise MalformedReply(vm, "domainListGetStats", type(err).__name__) from err
        images = self._backup_images(vm, backup)
        found.drives.extend(await self._backup_needs.add(
            vm, await self._job_drives(vm, stats, xml, commits, found,
                                       backups.job_mirrors(images)),
            backups.push_sources(images, disks)))
        for drive, reason in found.skipped:
            log.warning("drive skipped", vm=vm, drive=drive, reason=reason)
        self._tracker.drives_seen(vm, found.drives)
        return found.drives

    async def _read(self, vm: str, *,
                    commits: bool) -> tuple[dict[str, Any], str, set[str], str]:
        """The domain's block stats (backing chains included), its live XML, with
        ``commits`` the disks that run a snapshot merge, and the backup XML while a backup
        runs ("" otherwise); one worker-thread call.

        Cost per look: ``domainListGetStats`` and ``XMLDesc`` always; ``blockJobInfo`` per
        disk whose chain has three images or more (``_commit_jobs``); ``backupGetXMLDesc``
        only when the block stats list an image the domain XML does not describe
        (``backups.undescribed``: a backup's scratch or target). A VM with no job and
        short chains costs two calls.
        """
        conn = self._require(vm, "domainListGetStats")
        backups_on = self._watch_backups

        def read(c: libvirt.virConnect) -> tuple[dict[str, Any], str, set[str], str]:
            dom = c.lookupByName(vm)
            if not dom.isActive():
                raise _NotRunning
            found = c.domainListGetStats([dom], libvirt.VIR_DOMAIN_STATS_BLOCK, STATS_FLAGS)
            stats = found[0][1] if found else {}
            xml = dom.XMLDesc(0)
            running = _commit_jobs(dom, xml) if commits else set()
            backup = _backup_xml(dom, stats, xml) if backups_on else ""
            return stats, xml, running, backup

        try:
            return await self._unless_outgoing(
                vm, "domainListGetStats", conn.call(vm, "domainListGetStats", read))
        except _NotRunning:
            raise VmNotFound(vm, "domainListGetStats", "domain is not running") from None

    async def _unless_outgoing(self, vm: str, call: str, pending: Awaitable[T]) -> T:
        """``pending``, unless libvirt's migration iteration event marks the VM as migrating
        out first (``outgoing.py``): then stop waiting (the call waits behind the
        migration's job, for as long as the migration runs) and raise. A VM marked already
        is asked as usual (a stats call may get through between the migration's own).

        Raises:
            LibvirtCallFailed: the VM was marked while the call waited.
        """
        marks = self._tracker.outgoing
        if marks.get(vm) is not None:
            return await pending
        result: list[T] = []
        failure: list[Exception] = []

        async with anyio.create_task_group() as tg:
            async def ask() -> None:
                try:
                    result.append(await pending)
                except Exception as err:  # noqa: BLE001 - raised below, not in a group
                    failure.append(err)
                tg.cancel_scope.cancel()

            async def marked() -> None:
                await marks.wait(vm)
                tg.cancel_scope.cancel()

            tg.start_soon(ask)
            tg.start_soon(marked)
        if failure:
            raise failure[0]
        if result:
            return result[0]
        raise LibvirtCallFailed(vm, call, libvirt.VIR_ERR_OPERATION_INVALID,
                                "the domain started migrating out: its job holds the call")

    def _backup_images(self, vm: str, xml: str) -> list[backups.BackupImage]:
        """The images a running backup writes; a backup XML refused is counted and logged,
        and the drives are still reported without it."""
        try:
            return backups.parse_backup(xml) if xml else []
        except backups.BackupXmlError as err:
            self.session_failures += 1
            log.warning("backup XML not understood", vm=vm, error=str(err))
            return []

    async def _job_drives(self, vm: str, stats: dict[str, Any], xml: str,
                          commits: set[str], found: DrivesFound,
                          backup: list[jobs.Mirror]) -> list[DriveInfo]:
        """The job targets: each ``<mirror>`` (an active commit's base, a copy's target),
        the base of each running snapshot merge (``merges.py``), commit bases measured, and
        each image a running backup writes (``backups.py``)."""
        mirrors = jobs.parse_mirrors(xml) + backup
        tops: dict[str, str] = {}
        bounds: dict[str, int] = {}
        for m in mirrors:
            top = next((d for d in found.drives if d.drive.startswith(m.target + "[")), None)
            if top is not None:
                tops[indexed_name(m.target, m.index)] = top.path
        chains = merges.parse_chains(xml) if commits else {}
        for disk in sorted(commits):
            pair = merges.commit_pair(disk, chains.get(disk, []), self._intents.get(vm, disk))
            if pair is None:
                found.skipped.append((disk, "a snapshot merge runs but libvirt does not say"
                                      " into which image; run prepare-merge before it"))
                continue
            mirrors.append(jobs.Mirror(disk, "commit", pair.base.index, pair.base.path))
            tops[pair.base_name] = pair.top.path
            bounds[pair.base_name] = merges.with_bound(pair, chains[disk], stats).bound
        targets = jobs.job_targets(vm, stats, mirrors, found)
        return await self._commit_needs.add(vm, targets, tops, bounds)

    async def merge_base(self, vm: str, drive: str,
                         base: int | None) -> tuple[merges.MergePair, DriveInfo]:
        """The images ``autoextend volume prepare-merge VM DRIVE [--base N]`` names (DRIVE
        ``vda``: the active image is the top; ``vda[N]``: image N is; the base defaults to
        the image right below the top) and the base's numbers now, as a commit target.
        Records them, so the commit that follows is watched with that base.

        Raises:
            MergeChoiceError: no such drive, image or pair, or a base autoextend cannot grow.
            VmNotFound, LibvirtBackendError: the domain does not run, libvirt failed.
        """
        parsed = merges.parse_drive(drive)
        if parsed is None:
            raise merges.MergeChoiceError(
                f"{drive[:64]!r} is no drive name (vda, or vda[N]: image N is the top)")
        disk, top = parsed
        stats, xml, _, _ = await self._read(vm, commits=False)
        chains = merges.parse_chains(xml)
        if disk not in chains:
            raise merges.MergeChoiceError(
                f"VM {vm[:64]} has no writable disk {disk} without a block job running")
        pair = merges.with_bound(merges.choose(disk, chains[disk], top, base), chains[disk],
                                 stats)
        found = DrivesFound()
        targets = jobs.job_targets(
            vm, stats, [jobs.Mirror(disk, "commit", pair.base.index, pair.base.path)], found)
        if not targets:
            reason = found.skipped[0][1] if found.skipped else "no block stats"
            raise merges.MergeChoiceError(f"{pair.base_name}: {reason}")
        self._intents.record(vm, pair)
        return pair, targets[0]

    async def set_threshold(self, vm: str, drive: DriveInfo, threshold: int) -> None:
        """Arm ``drive.node`` (``vda[N]``); libvirt clears it when the event fires. One RPC
        on a domain seen before (``_on_domain``).

        Raises:
            LibvirtCallFailed: at once while the domain migrates out (``outgoing.py``):
                libvirt runs no threshold change (a MODIFY job) until the migration ends,
                and the call would only wait for its end.
        """
        self._require(vm, "setBlockThreshold")
        if self._tracker.outgoing.get(vm) is not None:
            raise LibvirtCallFailed(vm, "setBlockThreshold", libvirt.VIR_ERR_OPERATION_INVALID,
                                    "the domain migrates out: no threshold change until the "
                                    "migration ends")
        await self._unless_outgoing(vm, "setBlockThreshold", self._on_domain(
            vm, "setBlockThreshold", lambda dom: dom.setBlockThreshold(drive.node, threshold)))

    async def _on_domain(self, vm: str, call: str, fn: Callable[[libvirt.virDomain], T]) -> T:
        """``fn(domain)`` in a worker thread, on the domain's cached handle.

        libvirtd finds the domain of a handle by its UUID, so a cached handle never reaches
        another domain: one whose domain was undefined and defined again under the same
        name fails with "no domain", and is then looked up once more by name.
        """
        conn = self._require(vm, call)
        cache = self._domains

        def run(c: libvirt.virConnect) -> T:
            cached = cache.get(vm)
            if cached is not None and cached[0] is c:
                try:
                    return fn(cached[1])
                except libvirt.libvirtError as err:
                    if err.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise
                    cache.pop(vm, None)
            dom = c.lookupByName(vm)
            cache[vm] = (c, dom)
            return fn(dom)

        return await conn.call(vm, call, run)

    async def run_state(self, vm: str) -> RunState:
        """Running, or paused and why (``diskErrors()`` tells ENOSPC from other I/O errors)."""
        conn = self._require(vm, "state")

        def read(c: libvirt.virConnect) -> tuple[int, int, dict[str, int] | None, str]:
            dom = c.lookupByName(vm)
            state, reason = dom.state()
            errors = dom.diskErrors() if ev.needs_disk_errors(state, reason) else None
            return state, reason, errors, dom.XMLDesc(0) if errors else ""

        state, reason, errors, xml = await conn.call(vm, "state", read)
        result = ev.run_state_of(state, reason, errors)
        if result is None:
            raise VmNotFound(vm, "state", "domain is shut off")
        if errors:
            try:
                disks = parse_disks(xml)
            except DomainXmlError as err:
                raise MalformedReply(vm, "state", str(err)) from err
            result = dataclasses.replace(result, errors=ev.drive_errors(errors, disks))
        return result

    async def migration(self, vm: str) -> MigrationInfo:
        """The VM's migration role and phase.

        A VM that libvirt's migration iteration event marked as migrating out
        (``outgoing.py``) is answered at once, and its mark is checked against ``jobStats``
        in the background. Otherwise the job (``jobStats``) and ``state()`` are asked, but an
        iteration event that comes while ``jobStats`` waits on the migration's job ends the
        wait: the answer is then "migrating out".
        """
        marks = self._tracker.outgoing
        if marks.get(vm) is not None:
            self._tracker.verify.add(vm)
            return OUTGOING
        answer: MigrationInfo | None = None
        failure: LibvirtBackendError | None = None

        async with anyio.create_task_group() as tg:
            async def ask() -> None:
                nonlocal answer, failure
                try:
                    answer = await self._job_migration(vm)
                except LibvirtBackendError as err:
                    failure = err
                tg.cancel_scope.cancel()

            async def marked() -> None:
                nonlocal answer
                await marks.wait(vm)
                answer = OUTGOING
                tg.cancel_scope.cancel()

            tg.start_soon(ask)
            tg.start_soon(marked)
        if answer is OUTGOING or failure is None:
            assert answer is not None
            return self._incoming_ended(vm, answer)
        raise failure

    def _incoming_ended(self, vm: str, answer: MigrationInfo) -> MigrationInfo:
        """A domain that STARTED/MIGRATED here whose job no longer runs and that is not
        paused for its migration: the incoming migration completed (a failed one takes the
        domain away). libvirt drops the job then, so the answer would be "no migration";
        the monitor needs the arrival (``monitor/handoff.py``). Said once."""
        if vm not in self._tracker.incoming:
            return answer
        if answer.role is Role.NONE:
            self._tracker.incoming.discard(vm)
            return MigrationInfo(Role.DESTINATION, Phase.COMPLETED)
        if answer.role is not Role.DESTINATION or not answer.running:
            self._tracker.incoming.discard(vm)
        return answer

    async def _job_migration(self, vm: str) -> MigrationInfo:
        """``jobStats`` and ``state()``, in the monitor's terms."""
        conn = self._require(vm, "jobStats")

        def read(c: libvirt.virConnect) -> tuple[dict[str, object], int, int]:
            dom = c.lookupByName(vm)
            state, reason = dom.state()
            return dict(dom.jobStats()), state, reason

        job, state, reason = await conn.call(vm, "jobStats", read)
        return migration_of(job, state, reason)

    async def outgoing_migration(self, vm: str) -> bool:
        """``Hypervisor.outgoing_migration``: True at once for a VM libvirt's migration
        iteration event marked as migrating out (``outgoing.py``); otherwise one
        ``jobStats`` RPC (no event marks the phases before the first RAM pass), which also
        ends with True if the mark comes while it waits behind the migration's job."""
        if self._tracker.outgoing.get(vm) is not None:
            return True
        try:
            job = await self._unless_outgoing(vm, "jobStats", self._on_domain(
                vm, "jobStats", lambda dom: dict(dom.jobStats())))
        except LibvirtCallFailed:
            if self._tracker.outgoing.get(vm) is not None:
                return True
            raise
        return outgoing(job)

    async def error_policies(self, vm: str) -> dict[str, tuple[str, str]]:
        """{drive: (error_policy, rerror_policy)} of each managed-kind drive (writable qcow2
        on a block device), from the live XML; "" where the XML sets none (QEMU's default:
        pause on ENOSPC). A drive with ``report`` or ``ignore`` hands ENOSPC to the guest
        (``DiskFacts.write_error_reaches_guest``). The monitor does not ask yet (issue 29)."""
        conn = self._require(vm, "XMLDesc")
        xml = await conn.call(vm, "XMLDesc", lambda c: c.lookupByName(vm).XMLDesc(0))
        try:
            return error_policies(parse_disks(xml))
        except DomainXmlError as err:
            raise MalformedReply(vm, "XMLDesc", str(err)) from err

    async def kill(self, vm: str) -> None:
        """``virDomainDestroy``: the domain stops at once (``[resume] policy = "kill"``)."""
        conn = self._require(vm, "destroy")
        await conn.call(vm, "destroy", lambda c: c.lookupByName(vm).destroy())

    async def resume(self, vm: str) -> None:
        await self._on_domain(vm, "resume", lambda dom: dom.resume())

    async def suspend(self, vm: str) -> None:
        conn = self._require(vm, "suspend")
        await conn.call(vm, "suspend", lambda c: c.lookupByName(vm).suspend())

    def volume_of(self, drive: DriveInfo) -> VolumeRef | None:
        return self._lookup(drive.path)

    async def io_limits(self, vm: str, drive: DriveInfo) -> IoLimits:
        """The disk's limits (``blockIoTune``, ``libvirt_backend/iotune.py``)."""
        target = self._io_target(vm, drive)
        conn = self._require(vm, "blockIoTune")
        params = await conn.call(
            vm, "blockIoTune",
            lambda c: dict(c.lookupByName(vm).blockIoTune(target, libvirt.VIR_DOMAIN_AFFECT_LIVE)))
        try:
            return iotune.limits_from(params)
        except iotune.IoTuneError as err:
            raise MalformedReply(vm, "blockIoTune", str(err)) from err

    async def set_io_limits(self, vm: str, drive: DriveInfo, limits: IoLimits) -> None:
        """``setBlockIoTune`` (live) with exactly ``limits``."""
        target = self._io_target(vm, drive)
        params = iotune.params_of(limits)
        conn = self._require(vm, "setBlockIoTune")
        await conn.call(
            vm, "setBlockIoTune",
            lambda c: c.lookupByName(vm).setBlockIoTune(target, params,
                                                        libvirt.VIR_DOMAIN_AFFECT_LIVE))

    @staticmethod
    def _io_target(vm: str, drive: DriveInfo) -> str:
        try:
            return iotune.target_of(drive)
        except ValueError as err:
            raise HypervisorError(f"{vm}: {err}") from None

    # ------------------------------------------------------------------ connection

    def _require(self, vm: str, call: str) -> LibvirtConnection:
        conn = self._conn
        if conn is None or conn.closed.is_set():
            raise LibvirtDisconnected(vm, call)
        return conn

    async def _connection_loop(self, task_status: TaskStatus[None]) -> None:
        s = self.settings
        delay = s.reconnect_interval_s
        failures = 0
        started = False

        def mark_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        while True:
            try:
                conn = await LibvirtConnection.open(s)
            except LibvirtConnectFailed as err:
                failures += 1
                self._connect_error = err.reason
                # One warning per outage (the first failure), retries at debug.
                (log.warning if failures == 1 else log.debug)(
                    "libvirt connect failed", uri=s.uri, error=err.reason, failures=failures,
                    retry="watching nothing until libvirtd answers; retrying",
                    retry_s=delay)
                mark_started()
                await self._clock.sleep(delay)
                delay = min(delay * 2, s.reconnect_max_s)
                continue
            failures, delay = 0, s.reconnect_interval_s
            self._connect_error = None
            try:
                await self._serve(conn, mark_started)
            except LibvirtBackendError as err:
                log.warning("libvirt connection unusable", uri=s.uri, error=str(err))
            finally:
                self._conn = self._tracker.current = None
                with anyio.CancelScope(shield=True):
                    await conn.close()
            mark_started()
            await self._clock.sleep(s.reconnect_interval_s)

    async def _serve(self, conn: LibvirtConnection, mark_started: Callable[[], None]) -> None:
        tracker = self._tracker
        self._conn = tracker.current = conn
        tracker.enospc_seen.clear()
        tracker.outgoing.clear_all()  # events may have been missed: jobStats decides again
        for event_id, callback in (
            (libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, tracker.on_lifecycle),
            (libvirt.VIR_DOMAIN_EVENT_ID_IO_ERROR_REASON, tracker.on_io_error),
            (libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_THRESHOLD, tracker.on_threshold),
            (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_ADDED, tracker.on_device_change),
            (libvirt.VIR_DOMAIN_EVENT_ID_DEVICE_REMOVED, tracker.on_device_change),
            (libvirt.VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2, jobs.block_job_callback(tracker)),
            (libvirt.VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION, tracker.on_migration_iteration),
            (libvirt.VIR_DOMAIN_EVENT_ID_JOB_COMPLETED, tracker.on_job_completed),
        ):
            await conn.call("", "domainEventRegisterAny", conn.register(event_id, callback))
        await self._reconcile(conn, announce_all=True)
        self.connects += 1
        log.info("libvirt connected", uri=conn.uri, vms=len(tracker.active),
                 connects=self.connects)
        mark_started()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._rescan_loop, conn)
            await conn.closed.wait()
            tg.cancel_scope.cancel()
        log.warning("libvirt connection lost", uri=conn.uri, reason=conn.close_reason)

    async def _rescan_loop(self, conn: LibvirtConnection) -> None:
        while True:
            await self._clock.sleep(self.settings.rescan_interval_s)
            try:
                await self._reconcile(conn, announce_all=False)
            except LibvirtBackendError as err:
                log.debug("libvirt rescan failed", error=str(err))

    async def _reconcile(self, conn: LibvirtConnection, *, announce_all: bool) -> None:
        """Compare the running domains with what we know; announce the difference.

        A VM that had a lifecycle event while the list was being read is left to that event.
        """
        seq_before = dict(self._tracker.event_seq)

        def names(c: libvirt.virConnect) -> set[str]:
            flags = libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE
            return {dom.name() for dom in c.listAllDomains(flags)}

        running = await conn.call("", "listAllDomains", names)
        if conn is self._conn:
            self._tracker.reconcile(running, seq_before, announce_all=announce_all)
        for vm in set(self._domains) - running:  # handles of domains that went away
            self._domains.pop(vm, None)

    # ------------------------------------------------------------------ follow-ups

    async def _resync_loop(self) -> None:
        """Deliver what did not fit in the stream: VmAppeared or VmGone, as it is now."""
        tracker = self._tracker
        while True:
            for vm in sorted(await tracker.resync.take()):
                if self._conn is None:
                    continue  # the reconnect announces every running domain anyway
                try:
                    await self.run_state(vm)
                    running = True
                except VmNotFound:
                    running = False
                except LibvirtBackendError as err:
                    log.debug("resync check failed", vm=vm, error=str(err))
                    continue
                assert tracker.events is not None
                if running:
                    tracker.active.add(vm)
                    await tracker.events.send(VmAppeared(vm))
                else:
                    tracker.forget(vm)
                    await tracker.events.send(VmGone(vm))

    async def _classify_loop(self) -> None:
        """Why did a VM pause for an I/O error? Ask libvirt; send VmPaused with the answer."""
        tracker = self._tracker
        while True:
            for vm in sorted(await tracker.classify.take()):
                try:
                    state = await self.run_state(vm)
                except VmNotFound:
                    continue  # STOPPED follows (or came already)
                except LibvirtBackendError as err:
                    log.debug("pause classification failed", vm=vm, error=str(err))
                    tracker.resync.add(vm)
                    continue
                if not state.running and state.pause_reason is not None:
                    tracker.emit(VmPaused(vm, state.pause_reason, state))


    async def _verify_loop(self) -> None:
        """Check outgoing-migration marks against ``jobStats``: a mark whose migration
        ended with no event to say so (cancelled before the switchover) is dropped, and the
        monitor is told to ask again. A mark set anew meanwhile is kept."""
        tracker = self._tracker
        while True:
            for vm in sorted(await tracker.verify.take()):
                seen = tracker.outgoing.get(vm)
                if seen is None or self._conn is None:
                    continue
                try:
                    info = await self._job_migration(vm)
                except VmNotFound:
                    continue  # STOPPED clears it (or did)
                except LibvirtBackendError as err:
                    log.debug("outgoing migration check failed", vm=vm, error=str(err))
                    continue  # the monitor's next look hands it back
                if info.role is Role.SOURCE and info.running:
                    continue
                if tracker.outgoing.clear(vm, seen):
                    log.info("outgoing migration over (jobStats)", vm=vm, role=info.role.value,
                             phase=info.phase.value)
                    tracker.emit(MigrationChanged(vm))


def _commit_jobs(dom: Any, xml: str) -> set[str]:
    """The disks that may hold a snapshot merge (a chain of three or more, no ``<mirror>``)
    and run a commit now (``blockJobInfo``; in a worker thread)."""
    running: set[str] = set()
    for disk, chain in merges.parse_chains(xml).items():
        if not merges.may_merge(chain):
            continue
        try:
            info = dom.blockJobInfo(disk, 0)
        except libvirt.libvirtError:
            continue  # the disk went away meanwhile: the next look sees it
        if info and info.get("type") == libvirt.VIR_DOMAIN_BLOCK_JOB_TYPE_COMMIT:
            running.add(disk)
    return running


def _backup_xml(dom: Any, stats: dict[str, Any], xml: str) -> str:
    """The backup XML when the block stats show an image the domain XML does not describe
    (a backup's scratch or target), else "" without asking (in a worker thread)."""
    if not backups.undescribed(stats, backups.described(xml)):
        return ""
    try:
        return str(dom.backupGetXMLDesc(0))
    except libvirt.libvirtError:
        return ""  # no backup (it ended meanwhile, or another job's image): nothing to add


class _NotRunning(Exception):
    """Raised in a worker thread: the domain exists but is not active."""
