"""``autoextend run``: build the parts from the config, wire them, run until SIGTERM.

Wiring (config flows down from here; nothing reads globals)::

    volume backend (lvm | loop) ──> extender (local | cluster agent's mailbox) ─┐
    hypervisor (qmp | libvirt) ─────────────────────────────────────────────────┴─> Monitor
    control socket, metrics, sd_notify, signals

SIGTERM/SIGINT cancel everything and exit cleanly; SIGHUP (or the control socket's ``reload``)
reloads the config file: an invalid file is logged and the old config kept; a file that looks
half-written (``autoextend/reloadguard.py``) is held back until confirmed; a valid one is
applied as far as the running parts can take it, and the keys that need a restart are logged
and shown by ``status`` (``autoextend/reload.py``). Monitor state is never lost. Signals that
came before the receiver existed were queued by :mod:`autoextend.earlysignals` and are handled
first; SIGHUPs before the service is ready become one reload once it is.
"""

from __future__ import annotations

import enum
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from autoextend import (
    drill,
    earlysignals,
    hostsummary,
    logs,
    prepare,
    reloadguard,
    startup,
    timeouts,
    validation,
)
from autoextend import reload as reload_mod
from autoextend import settings as settings_mod
from autoextend.capacity.reduce import in_use_names, parse_volume
from autoextend.capacity.wiring import CapacityPart
from autoextend.checks import ALL_ON, Checks
from autoextend.clock import Clock, MonotonicClock
from autoextend.cluster import ClusterAgent
from autoextend.control import ControlServer
from autoextend.errors import AutoextendError, ConfigError
from autoextend.logs import get_logger
from autoextend.lvm import factory
from autoextend.lvm.devviews import DeviceViews
from autoextend.lvm.foreign import ForeignWriteAudit
from autoextend.lvm.loop_backend import LoopVolumeBackend
from autoextend.lvm.loop_pool import device_views as loop_device_views
from autoextend.lvm.lvm_backend import LvmVolumeBackend
from autoextend.lvm.reader import LvmReader
from autoextend.lvm.reserve import FreeSpaceBackend
from autoextend.lvm.runner import ProcessRunner
from autoextend.lvm.writer import WriterTally
from autoextend.metrics import Metrics, serve_metrics
from autoextend.monitor import holds
from autoextend.monitor.chunking import WriteRateChunks
from autoextend.monitor.context import Sizes, ViewSizes
from autoextend.monitor.core import Monitor, VolumeInUse
from autoextend.monitor.local import LocalExtender
from autoextend.monitor.observer import Fanout, MonitorObserver, Tally
from autoextend.monitor.pauseclaims import OwnPause
from autoextend.monitor.protocols import Extender, Hypervisor
from autoextend.monitor.views import PerVolumeSizes
from autoextend.poolops import PoolOps
from autoextend.prepare_merge import MergeChains, merge_request, prepare_merge
from autoextend.qemuimg import qemu_img_fully_allocated, qemu_img_measure
from autoextend.sdnotify import Notifier
from autoextend.settings import Settings
from autoextend.sharedgate import SharedAreaGate
from autoextend.spm.handoffio import StorageHandoff
from autoextend.spm.inusepub import DeviceSource, InUseSource
from autoextend.spm.summary import HostFacts
from autoextend.spm.summarypub import FactsSource
from autoextend.volumes import (
    LocalAuthority,
    SpmAuthority,
    VolumeBackend,
    VolumeRef,
    innermost,
)

log = get_logger("service")

CONFIRM_HOW = "autoextend config reload --confirm, or SIGHUP again with the same file"


class ReloadOutcome(enum.Enum):
    APPLIED = "applied"   # the file's config is in effect (as far as a reload applies)
    HELD = "held"         # it looks half-written: the running config stays until confirmed
    FAILED = "failed"     # invalid or unreadable: the running config stays


@dataclass(frozen=True)
class HeldReload:
    """A reload held back by :mod:`autoextend.reloadguard`, waiting for confirmation."""

    digest: str                          # of the file's bytes: a second SIGHUP confirms it
    held: tuple[reloadguard.Change, ...]  # the changes that tripped the rule
    changes: tuple[reloadguard.Change, ...]  # every change it would make

    def as_dict(self) -> dict[str, Any]:
        return {"held": [c.line() for c in self.held], "held_keys": [c.key for c in self.held],
                "changes": [c.line() for c in self.changes], "confirm": CONFIRM_HOW}


def make_volume_backend(
    settings: Settings, authority: SpmAuthority | None = None,
    tally: WriterTally | None = None,
) -> FreeSpaceBackend:
    """The host's volume backend. Single-host (local extender) mode: this host is the only
    writer, by configuration (``LocalAuthority``). In mailbox mode the host side gets no
    authority at all; the SPM's backend is made with the lease's term as its authority."""
    if authority is None and settings.service.extender == "local":
        authority = LocalAuthority()
    return factory.make_pool_backend(
        settings.volumes, settings.lvm, authority,
        reserves_mib=settings.policy.vg_reserve_mib, extent_mib=settings.policy.extent_mib,
        tally=tally,
    )


def make_foreign_write_audit(settings: Settings, writes: WriterTally) -> ForeignWriteAudit | None:
    """The foreign-write audit (``lvm/foreign.py``) of the lvm backend: its own read-only
    lvm2 process per look, beside the backend's runner."""
    lvm = settings.lvm
    if settings.volumes.backend != "lvm" or not lvm.vgs:
        return None
    runner = ProcessRunner(lvm.lvm_binary, lvm.command_timeout_s, 1, use_aio=lvm.use_aio)
    return ForeignWriteAudit(writes.ledger, LvmReader(runner, factory.command_config(lvm)),
                             lvm.vgs)


class LvmViewSizes:
    """The view check's sizes on lvm: one ``lvs --readonly`` per VG (``monitor/views.py``)."""

    def __init__(self, backend: LvmVolumeBackend) -> None:
        self._backend = backend

    async def view_sizes(self, vg: str, volumes: Sequence[VolumeRef]
                         ) -> dict[VolumeRef, Sizes]:
        every = await self._backend.lv_views(vg)
        return {v: Sizes(*every[v]) for v in volumes if v in every}


class LoopViewSizes:
    """The view check's sizes on the loop stand-in: one sysfs scan and one worker-thread
    hop per VG (``LoopVolumeBackend.loop_views``)."""

    def __init__(self, backend: LoopVolumeBackend) -> None:
        self._backend = backend

    async def view_sizes(self, vg: str, volumes: Sequence[VolumeRef]
                         ) -> dict[VolumeRef, Sizes]:
        return {v: Sizes(*sizes) for v, sizes in (await self._backend.loop_views(volumes)).items()}


def make_view_sizes(backend: VolumeBackend) -> ViewSizes:
    """Where the view check reads sizes: one report per VG on lvm, one scan per VG on the
    loop stand-in; the backend's own ``size`` and ``metadata_size`` per volume otherwise."""
    inner = innermost(backend)
    if isinstance(inner, LvmVolumeBackend):
        return LvmViewSizes(inner)
    if isinstance(inner, LoopVolumeBackend):
        return LoopViewSizes(inner)
    return PerVolumeSizes(backend)


def make_hypervisor(
    settings: Settings, lookup: Callable[[str], VolumeRef | None], clock: Clock
) -> Hypervisor:
    return make_hypervisor_parts(settings, lookup, clock)[0]


def make_hypervisor_parts(
    settings: Settings, lookup: Callable[[str], VolumeRef | None], clock: Clock
) -> tuple[Hypervisor, MergeChains | None]:
    """The hypervisor backend, and what ``volume prepare-merge`` asks (libvirt only: QEMU
    alone has no snapshot chain a management merges by name)."""
    if settings.service.hypervisor == "libvirt":
        from autoextend.libvirt_backend.hypervisor import LibvirtHypervisor

        hypervisor = LibvirtHypervisor(settings.libvirt, lookup, clock)
        return hypervisor, hypervisor
    from autoextend.qmp.hypervisor import QmpHypervisor

    return QmpHypervisor(settings.qmp, lookup, clock), None


def make_cluster_agent(
    settings: Settings, host_backend: VolumeBackend, clock: Clock, checks: Checks = ALL_ON,
    tally: WriterTally | None = None, in_use: InUseSource | None = None,
    summary: FactsSource | None = None, handoff: StorageHandoff | None = None,
) -> ClusterAgent:
    """Mailbox mode: the agent, with its sections and the SPM's per-term backend factory."""

    def spm_backend(term: SpmAuthority) -> FreeSpaceBackend:
        return make_volume_backend(settings, term, tally)

    inner = innermost(host_backend)  # this host's view of the PVs (GROW-PV)
    devices: DeviceSource | None = None
    if isinstance(inner, LvmVolumeBackend):
        devices = DeviceViews(inner.reader, settings.lvm.vgs, clock)
    elif isinstance(inner, LoopVolumeBackend):
        devices = partial(loop_device_views, inner.root, settings.lvm.vgs, inner)
    return ClusterAgent(settings.lease, settings.mailbox, settings.lvm.vgs, host_backend,
                        spm_backend, clock, checks=checks, in_use=in_use, summary=summary,
                        handoff=handoff, devices=devices)


class _LateUsers:
    """The service's monitor's volumes in use, once the monitor exists (none before)."""

    def __init__(self, service: Service) -> None:
        self._service = service

    def volumes_in_use(self) -> list[VolumeInUse]:
        monitor = getattr(self._service, "monitor", None)
        return monitor.volumes_in_use() if monitor is not None else []


class Service:
    """One running autoextend: the monitor plus its companions."""

    def __init__(
        self,
        settings: Settings,
        *,
        config_path: Path | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
        clock: Clock | None = None,
        observer: MonitorObserver | None = None,
        notifier: Notifier | None = None,
        checks: Checks = ALL_ON,
    ) -> None:
        """``checks``: every safety check on; only a test's negative control passes one off
        (``autoextend/checks.py``). It reaches every part built here that has one."""
        validation.check_service(settings)  # `run` checked it already; direct callers too
        self.settings = settings
        self.config_path = config_path
        self.overrides = overrides or {}
        self.clock = clock or MonotonicClock()
        self.tally = Tally()
        self.history = hostsummary.ExtendHistory(self.clock)  # pool status (issue 33)
        self.metrics = Metrics()
        self.metrics_address: tuple[str, int] | None = None
        self.notifier = notifier or Notifier()
        # In dependency order: volumes, then the extender (the cluster agent's in mailbox
        # mode: it waits inside for the agent to join), then the hypervisor and the monitor.
        self.writes = WriterTally()  # every writer's discards and commits, across SPM terms
        self.backend = make_volume_backend(settings, tally=self.writes)
        self.foreign = make_foreign_write_audit(settings, self.writes)
        self.cluster: ClusterAgent | None = None
        self.extender: Extender
        self.handoff: StorageHandoff | None = None
        if settings.service.extender == "mailbox":
            # The ENOSPC pauses this host claims ride in its in-use record, and a VM that
            # arrives paused from a migration is resumed only on its source's claim
            # (monitor/handoff.py).
            self.handoff = StorageHandoff(settings.lease.host_id, self._pause_claims,
                                          self.clock)
            # This host's open volumes for its in-use record (issue 27): the monitor's
            # drives, asked when the publisher runs (the monitor is made below).
            self.cluster = make_cluster_agent(
                settings, self.backend, self.clock, checks, self.writes,
                in_use=in_use_names(_LateUsers(self), self.backend),
                summary=self.host_facts, handoff=self.handoff)
            self.extender = self.cluster.extender()
        else:
            self.extender = LocalExtender(self.backend)
        self.hypervisor, self.merge_chains = make_hypervisor_parts(
            settings, self.backend.lookup, self.clock)
        self.chunks = WriteRateChunks(settings.policy, self.clock)
        self.metrics.volume_gauge_from(
            "autoextend_chunk_bytes",
            "The chunk in use per volume (chunk_mib, or the write-rate chunk)",
            lambda: {str(v): c for v, c in self.chunks.chunks().items()})
        # The capacity part before the monitor: the monitor takes its gate and tells it (an
        # observer) of clean stops; the part gets the monitor's queries in run().
        # Local mode beside a pool's shared area: reduces and removes read the other hosts'
        # in-use records first (issue 27, ``sharedgate.py``); none without one.
        self.shared_gate = (SharedAreaGate(settings, self.clock)
                            if self.cluster is None and settings.lease.path else None)
        shared = None if self.shared_gate is None else self._shared_refusal
        self.capacity = CapacityPart(settings, self.backend, self.clock, self.metrics.registry,
                                     cluster=self.cluster, shared=shared,
                                     on_level=lambda: self.notifier.status(self.summary()),
                                     lister=None if self.cluster is None else
                                     factory.make_volume_lister(settings.volumes, settings.lvm))
        observers: list[MonitorObserver] = [self.tally, self.metrics, self.chunks,
                                            self.capacity, self.history]
        if observer is not None:
            observers.append(observer)
        self.monitor = Monitor(
            self.hypervisor,
            self.extender,
            settings.policy,
            self.clock,
            policy_for=self.chunks,
            observer=Fanout(*observers),
            dry_run=settings.service.dry_run,
            resume=settings.resume,
            lease_ok=self._host_lease_valid if self.cluster is not None else None,
            extend_deadline_s=timeouts.extension_deadline_s(settings),
            views=self.backend,
            space_gate=self.capacity.gate,
            view_sizes=make_view_sizes(self.backend),
            checks=checks,
            spm_ok=self._spm_term_valid if self.cluster is not None else None,
            failover_s=(timeouts.failover_s(settings.lease.io_timeout_s,
                                            settings.lease.watchdog_fire_timeout_s)
                        if self.cluster is not None else None),
            measure_full=qemu_img_fully_allocated,  # the honest cap (monitor/caps.py)
            handoff=self.handoff,
            throttle_holds=os.path.join(settings.service.state_path, holds.FILE_NAME),
        )
        self._export_throttle_metrics()
        self.control = ControlServer(settings.service.control_socket)
        self.control.register("status", self._status)
        self.control.register("spm_step_down", self._step_down)
        self.control.register("spm_drill", self._spm_drill)
        self.control.register("volume_reduce", self._volume_reduce)
        self.control.register("volume_prepare", self._volume_prepare)
        self.control.register("merge_prepare", self._merge_prepare)
        # One writer for the pool (issue 27 item 2, ``poolops.py``).
        self.pool_ops = PoolOps(self.backend, settings.lvm.vgs,
                                settings.policy.chunk_mib << 20, self.cluster, shared)
        self.control.register("volume_create", self.pool_ops.volume_create)
        self.control.register("volume_remove",
                              lambda r: self.pool_ops.volume_remove(r, self.monitor))
        self.control.register("pool_grow", self.pool_ops.pool_grow)
        self.incoming = prepare.IncomingWatch(
            self.backend, lambda vm: self.monitor.settled(vm),
            lambda: self.monitor.frozen_views(), self.clock)
        self.control.register("reload", self._reload)
        self.control.register("config", self._config)
        self.reloads = 0
        self.reload_applied: tuple[str, ...] = ()       # by the last reload
        self.pending_restart: tuple[str, ...] = ()      # changed in the file, not in effect
        self.held: HeldReload | None = None              # a reload waiting for confirmation
        self._export_input_metrics()
        if self.cluster is not None:
            self._export_cluster_metrics(self.cluster)

    async def _shared_refusal(self, name: str, dry_run: bool) -> str | None:
        gate = self.shared_gate
        return None if gate is None else await gate.refusal(name, dry_run=dry_run)

    async def _volume_reduce(self, request: dict[str, Any]) -> dict[str, Any]:
        """Control command ``volume_reduce`` (``capacity/reduce.py``), checked against the
        monitor's volumes in use."""
        return await self.capacity.handle_reduce(request, self.monitor)

    async def _volume_prepare(self, request: dict[str, Any]) -> dict[str, Any]:
        """Control command ``volume_prepare``: ``{"volumes": ["vg/lv", ...], "paths":
        ["/dev/...", ...]}``. Refreshes this host's view of each volume (and of each path that
        is one of ours; other paths are listed as skipped) until it is at least its metadata
        size (:mod:`autoextend.prepare`)."""
        names = prepare.string_list(request, "volumes")
        paths = prepare.string_list(request, "paths")
        targets = {parse_volume(name) for name in names}
        skipped: list[str] = []
        for path in paths:
            found = self.backend.lookup(path)
            if found is None:
                skipped.append(path)
            else:
                targets.add(found)
        frozen = self.monitor.frozen_views()
        for volume in sorted(targets):
            if volume in frozen:
                raise prepare.ViewFrozen(volume, frozen[volume])
        await self._claim(sorted(targets))
        done = [await prepare.prepare_view(self.backend, volume) for volume in sorted(targets)]
        incoming = request.get("incoming_vm")
        if not incoming:  # a start on a stale view (a migration's early refresh is not one)
            for _ in range(prepare.stale_at_start(done)):
                self.metrics.stale_views.labels("start").inc()
        if isinstance(incoming, str) and incoming and targets:
            self.incoming.watch(incoming[:256], sorted(targets))
        return {"volumes": [p.as_dict() for p in done], "skipped": skipped}

    async def _claim(self, volumes: list[VolumeRef]) -> None:
        """Mailbox mode: list ``volumes`` in this host's in-use record and check that the
        SPM is shrinking none of them, before their views are made (the host's half of the
        intent protocol, ``spm/inusegate.py``). Refused: the claims of this call are taken
        back and the start fails with one line (retry later)."""
        publisher = None if self.cluster is None else self.cluster.publisher
        if publisher is None:
            return
        claimed: list[str] = []
        for volume in volumes:
            refusal = await publisher.claim(str(volume))
            if refusal is not None:
                for name in claimed:
                    publisher.release(name)
                raise AutoextendError(refusal)
            claimed.append(str(volume))

    async def _merge_prepare(self, request: dict[str, Any]) -> dict[str, Any]:
        """Control command ``merge_prepare``: ``{"vm": ..., "drive": "vda" | "vda[N]",
        "base": M | null}``. Grows the merge's base to what the merge needs before a
        management starts it (:mod:`autoextend.prepare_merge`)."""
        wanted = merge_request(request)
        if self.merge_chains is None:
            raise AutoextendError("volume prepare-merge needs the libvirt hypervisor"
                                  " (service.hypervisor = \"libvirt\")")
        with anyio.fail_after(timeouts.extension_deadline_s(self.settings) + 60):
            done = await prepare_merge(self.merge_chains, self.extender,
                                       self.monitor.policy_for, qemu_img_measure, wanted,
                                       dry_run=self.monitor.dry_run)
        return done.as_dict()

    def _export_input_metrics(self) -> None:
        """Counters of bad input refused at the service's edges (docs/operator-guide.md)."""
        m, control = self.metrics, self.control.counters
        m.counter_from("autoextend_hypervisor_session_failures_total",
                       "VM sessions ended by a bad reply or an error (the VM is retried)",
                       lambda: float(self.hypervisor.health().session_failures))
        m.counter_from("autoextend_hypervisor_malformed_events_total",
                       "Hypervisor events dropped because their data failed validation",
                       lambda: float(self.hypervisor.health().malformed_events))
        m.gauge_from("autoextend_hypervisor_unidentified_vms",
                     "QMP sockets found with no VM connected on them (connect failed: another "
                     "client holds the socket, or QEMU does not answer)",
                     lambda: float(self.hypervisor.health().unidentified))
        m.counter_from("autoextend_control_clients_refused_total",
                       "Control socket clients refused because too many were connected",
                       lambda: float(control.refused))
        m.counter_from("autoextend_control_client_errors_total",
                       "Control socket clients that sent garbage, timed out or vanished",
                       lambda: float(control.failed))
        m.counter_from("autoextend_control_accept_errors_total",
                       "Control socket accept() failures (out of file descriptors)",
                       lambda: float(control.accept_errors))
        m.volume_gauge_from(
            "autoextend_drive_error_policy",
            "Managed drives by write error policy (report and ignore hand ENOSPC to the "
            "guest as an I/O error)", self.monitor.drive_error_policies, label="policy")
        ledger = self.writes.ledger
        m.counter_from("autoextend_vg_foreign_writes_total",
                       "Changes to a pool VG's metadata that this host's writer did not make "
                       "(another process ran lvm2 on the pool)",
                       lambda: float(ledger.foreign_writes))
        m.counter_from("autoextend_discarded_bytes_total",
                       "Bytes of freed extents given back to the array (BLKDISCARD after a "
                       "reduce or remove)", lambda: float(self.writes.discarded.bytes))

    def _host_lease_valid(self) -> bool:
        """Mailbox mode: resume a VM after an I/O error only while this host's lease holds
        (not expired, not fencing itself)."""
        lease = self.cluster.lease if self.cluster is not None else None
        return lease is not None and lease.held

    def _spm_term_valid(self) -> bool:
        """Mailbox mode, for the write throttle's reason (``SPM failover``): an SPM is
        known and its host lease renews (this host holds the term, or the SPM's record was
        seen to change within two renewal intervals, 4 T)."""
        lease = self.cluster.lease if self.cluster is not None else None
        if lease is None:
            return False
        if lease.term is not None:
            return True
        spm = lease.current_spm()
        status = lease.host_states().get(spm[0]) if spm is not None else None
        return status is not None and status.silent_s < 4 * self.settings.lease.io_timeout_s

    def _export_throttle_metrics(self) -> None:
        """The write throttle's figures (``monitor/throttle.py``, ``monitor/rate.py``)."""
        m, monitor = self.metrics, self.monitor
        m.counter_from("autoextend_throttled_seconds",
                       "Drive-seconds spent with a write limit set by the throttle",
                       monitor.throttles.seconds_total)
        m.volume_gauge_from("autoextend_drive_headroom_seconds",
                            "Free space above the threshold divided by the recent write "
                            "rate: how long an extension may take before the guest pauses",
                            monitor.rates.headrooms)

    def _export_cluster_metrics(self, cluster: ClusterAgent) -> None:
        m = self.metrics

        def is_spm() -> float:
            return 1.0 if cluster.lease is not None and cluster.lease.term is not None else 0.0

        def renewal_age() -> float:
            age = cluster.lease.renewal_age() if cluster.lease is not None else None
            return float("nan") if age is None else age

        def server_counter(name: str) -> float:
            return float(getattr(cluster.server.counters, name)) if cluster.server else 0.0

        def host_counter(name: str) -> float:
            return float(getattr(cluster.mailbox.counters, name)) if cluster.mailbox else 0.0

        m.gauge_from("autoextend_spm_is_spm", "1 while this host holds the SPM lease", is_spm)
        m.counter_from("autoextend_cluster_join_failures_total",
                       "I/O errors while joining the pool (lease or mailbox; each retried)",
                       lambda: float(cluster.join_failures))
        m.gauge_from("autoextend_lease_renewal_age_seconds",
                     "Seconds since this host's last successful lease renewal", renewal_age)
        m.gauge_from("autoextend_mailbox_requests_sent",
                     "Requests this host wrote to its mailbox (since start)",
                     lambda: host_counter("sent"))
        m.gauge_from("autoextend_spm_mailbox_messages_received",
                     "Requests the SPM took up in its current term",
                     lambda: server_counter("received"))
        m.gauge_from("autoextend_spm_mailbox_corrupt_sectors",
                     "Corrupt mailbox sectors the SPM skipped in its current term",
                     lambda: server_counter("corrupt_sectors"))
        m.gauge_from("autoextend_spm_terms", "SPM terms this host has held",
                     lambda: float(cluster.terms))
        m.counter_from("autoextend_lease_bad_records_total",
                       "Lease records (delta, leader, dblock) read as corrupt or impossible",
                       lambda: float(cluster.lease.record_errors) if cluster.lease else 0.0)
        m.counter_from("autoextend_journal_records_total",
                       "Records this host wrote to the journal of metadata changes as SPM",
                       lambda: float(cluster.journal.appended))
        m.counter_from("autoextend_journal_write_failures_total",
                       "Journal records lost to a failed write (the change itself stands)",
                       lambda: float(cluster.journal.failures))

    async def _step_down(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.cluster is None:
            raise AutoextendError("this host runs in local mode: there is no SPM role")
        return await self.cluster.step_down()

    async def _spm_drill(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.cluster is None:
            raise AutoextendError("this host runs in local mode: there is no SPM role")
        timeout = request.get("timeout_s", 30.0)
        if not isinstance(timeout, int | float) or not 1 <= timeout <= 100:
            raise AutoextendError("timeout_s must be a number of seconds in 1..100")
        report = await drill.drill(self.cluster, self.tally, self.clock, float(timeout))
        return report.as_dict() | {"lines": report.lines()}

    async def _status(self, request: dict[str, Any]) -> dict[str, Any]:
        return {
            "service": {
                "hypervisor": self.settings.service.hypervisor,
                "hypervisor_problem": self.hypervisor.health().problem,
                "extender": self.settings.service.extender,
                "dry_run": self.monitor.dry_run,
                "extends_in_flight": self.monitor.extends_in_flight,
                "extends": self.tally.extends,
                "failed": self.tally.failed,
                "enospc_pauses": self.tally.enospc_pauses,
                "resumes": self.tally.resumes,
                "unmanaged_enospc": self.tally.unmanaged,
                "io_error_resumes": self.tally.io_error_resumes,
                "kills": self.tally.kills,
                "stale_views": self.tally.stale_views,
                "stale_view_pauses": self.tally.stale_view_pauses,
            },
            "vms": self.monitor.snapshot(),
            "spm": self.cluster.status() if self.cluster is not None else None,
            "config": self._config_status(),
            "capacity": self.capacity.status(),
            "foreign_writes": self._foreign_status(),
            "summary": hostsummary.as_dict(self.host_facts()),
        }

    def _pause_claims(self) -> list[OwnPause]:
        """The monitor's claimed ENOSPC pauses (none before the monitor exists)."""
        monitor = getattr(self, "monitor", None)
        return monitor.pause_claims() if monitor is not None else []

    def host_facts(self) -> HostFacts:
        """This host's summary (its summary record, ``pool status``; issue 33)."""
        monitor = getattr(self, "monitor", None)  # the agent may ask before it is made
        return hostsummary.facts(monitor.snapshot() if monitor is not None else [],
                                 self.history)

    def _foreign_status(self) -> dict[str, Any] | None:
        if self.foreign is None:
            return None
        last = self.writes.ledger.last
        return {"total": self.writes.ledger.foreign_writes, "looks": self.foreign.looked,
                "auditing": self.foreign.ledger.active(),
                "last": last.describe() if last is not None else None}

    def _config_status(self) -> dict[str, Any]:
        return {"path": str(self.config_path) if self.config_path else None,
                "reloads": self.reloads, "applied": list(self.reload_applied),
                "pending_restart": list(self.pending_restart),
                "held": self.held.as_dict() if self.held is not None else None}

    async def _reload(self, request: dict[str, Any]) -> dict[str, Any]:
        """``reload`` (``autoextend config reload [--confirm]``): like a SIGHUP; with
        ``confirm`` the file is applied even when the reload guard would hold it back."""
        confirm = request.get("confirm", False)
        if not isinstance(confirm, bool):
            raise AutoextendError("reload: confirm must be true or false")
        outcome = self.reload(confirm=confirm)
        if outcome is ReloadOutcome.FAILED:
            raise AutoextendError("the config file is invalid; the old config is kept "
                                  "(see the service log)")
        return {**self._config_status(), "outcome": outcome.value}

    async def _config(self, request: dict[str, Any]) -> dict[str, Any]:
        """``config``: the config in effect, for ``autoextend config check`` to compare a
        file against (with the same rule a reload applies)."""
        return {"running": self.settings.model_dump(mode="json"), "overrides": self.overrides,
                **self._config_status()}

    def summary(self) -> str:
        vms = self.monitor.snapshot()
        drives = sum(len(v["drives"]) for v in vms)
        paused = sum(1 for v in vms if v["paused"])
        text = (
            f"{len(vms)} VMs, {drives} drives, {self.monitor.extends_in_flight} extending, "
            f"{paused} paused, {self.tally.extends} extends"
        )
        space = self.capacity.summary()
        return f"{text}; {space}" if space else text

    def reload(self, *, confirm: bool = False) -> ReloadOutcome:
        """Re-read the config file; keep the old config when the new one is invalid, or
        when it looks half-written (``autoextend/reloadguard.py``) and is not confirmed:
        ``confirm``, or the same file content as the reload held back.

        Applies what the running parts can take (``autoextend/reload.py``); ``settings``
        stays the config in effect, and the keys that need a restart are logged and kept
        for ``status``."""
        try:
            loaded = settings_mod.load_file(self.config_path)
            new = loaded.settings
            if self.overrides:
                new = settings_mod.with_overrides(new, self.overrides)
            validation.check_service(new, settings_mod.source_name(self.config_path))
        except ConfigError as exc:
            log.error("config reload failed; keeping the old config", error=str(exc))
            return ReloadOutcome.FAILED
        found = reloadguard.changes(self.settings, new, loaded.raw,
                                    self.settings.service.reload_max_factor)
        suspicious = reloadguard.held(found)
        confirmed = confirm or (self.held is not None and self.held.digest == loaded.digest)
        if suspicious and not confirmed:
            self.held = HeldReload(loaded.digest, tuple(suspicious), tuple(found))
            log.warning("config reload held back until confirmed; keeping the running config",
                        path=str(self.config_path), **self.held.as_dict())
            return ReloadOutcome.HELD
        self.held = None
        plan = reload_mod.plan(self.settings, new)
        now = plan.effective
        logs.configure(now.service.log_level, now.service.log_format)
        self.chunks.reconfigure(now.policy)
        self.monitor.reconfigure(now.policy, self.chunks, now.service.dry_run, now.resume,
                                 extend_deadline_s=timeouts.extension_deadline_s(now))
        self.capacity.reconfigure(now)
        if self.cluster is not None:
            self.cluster.set_spm_priority(now.lease)
        self.settings = now
        self.reloads += 1
        self.reload_applied, self.pending_restart = plan.applied, plan.needs_restart
        extra: dict[str, Any] = (
            {"confirmed": [c.line() for c in suspicious]} if suspicious else {})
        if plan.needs_restart:
            log.warning("config reloaded; some changes need a restart",
                        path=str(self.config_path), applied=list(plan.applied),
                        needs_restart=list(plan.needs_restart), **extra)
        else:
            log.info("config reloaded", path=str(self.config_path),
                     applied=list(plan.applied), **extra)
        return ReloadOutcome.APPLIED

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._run(task_status)
        finally:
            with anyio.CancelScope(shield=True):
                await self.backend.aclose()

    async def _run(self, task_status: TaskStatus[None]) -> None:
        # Each part starts inside startup.step(): what the machine refuses is one line, exit 1.
        sock = self.settings.service.control_socket
        vol = self.settings.volumes.backend
        async with anyio.create_task_group() as tg:
            with startup.step(f"volume backend {vol}"):
                await anyio.to_thread.run_sync(
                    startup.check_volume_backend, vol, self.settings.lvm.lvm_binary
                )
            with startup.step(f"control socket {sock}"):
                await startup.check_control_socket_free(sock)
                await tg.start(self.control.serve)
            if self.cluster is not None:
                with startup.step(f"lease and mailbox on {self.settings.lease.path}"):
                    await tg.start(self.cluster.run)
            if self.settings.metrics.enabled:
                m = self.settings.metrics
                with startup.step(f"metrics endpoint {m.address}:{m.port}"):
                    self.metrics_address = await tg.start(
                        serve_metrics, self.metrics.registry, m.address, m.port
                    )
            with startup.step("monitor"):
                await tg.start(self.monitor.run)
            tg.start_soon(self.notifier.watchdog_loop, self.clock)
            tg.start_soon(self._status_loop)
            tg.start_soon(self.capacity.run, self.monitor)
            tg.start_soon(self.incoming.run)
            if self.foreign is not None:
                tg.start_soon(self._foreign_write_loop, self.foreign)
            self.notifier.ready(self.summary())
            log.info("service ready", hypervisor=self.settings.service.hypervisor,
                     extender=self.settings.service.extender)
            task_status.started()

    async def _foreign_write_loop(self, audit: ForeignWriteAudit) -> None:
        """The foreign-write audit at the capacity watcher's cadence (a reload applies)."""
        while True:
            await audit.look()
            await self.clock.sleep(self.settings.capacity.poll_interval_s)

    async def _status_loop(self) -> None:
        while True:
            await self.clock.sleep(10.0)
            self.notifier.status(self.summary())


async def serve(
    settings: Settings,
    config_path: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    checks: Checks = ALL_ON,
) -> None:
    """Run the service until SIGTERM/SIGINT; SIGHUP reloads (CLI overrides stay applied).

    Signals queued before this (:mod:`autoextend.earlysignals`) are handled first; SIGHUPs
    before the service is ready become one reload once it is ready. ``checks``: all on,
    except in the chaos soak's mutation check (``sim/mutant_service.py``)."""
    service = Service(settings, config_path=config_path, overrides=overrides, checks=checks)
    ready = anyio.Event()
    reload_waiting = False

    async def start() -> None:
        async with anyio.create_task_group() as inner:
            await inner.start(service.run)
            ready.set()

    async def reload_once_ready() -> None:
        nonlocal reload_waiting
        await ready.wait()
        reload_waiting = False
        service.reload()

    def handle(signum: int, tg: TaskGroup) -> bool:
        """Handle one signal; True when the service is to stop."""
        nonlocal reload_waiting
        if signum == signal.SIGHUP:
            if ready.is_set():
                service.reload()
            elif not reload_waiting:
                reload_waiting = True
                log.info("reload requested before the service is ready; it runs once ready")
                tg.start_soon(reload_once_ready)
            return False
        log.info("shutting down", signal=signal.Signals(signum).name)
        service.notifier.stopping()
        tg.cancel_scope.cancel()
        return True

    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as received:
            queued = earlysignals.take_queued()
            async with anyio.create_task_group() as tg:
                # start_soon, not start: SIGTERM must stop a start-up that waits (a lease join
                # takes seconds); a start-up error still ends the group and reaches the CLI.
                tg.start_soon(start)
                stopping = False
                for signum in queued:
                    stopping = handle(signum, tg)
                    if stopping:
                        break
                if not stopping:
                    async for signum in received:
                        if handle(signum, tg):
                            break
    finally:
        if earlysignals.holding():
            earlysignals.hold()  # a signal during the last steps of exit is queued, not fatal
    log.info("stopped")


def run_service(
    settings: Settings,
    config_path: Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> None:
    anyio.run(serve, settings, config_path, overrides)
