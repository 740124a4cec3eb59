"""Prometheus metrics: a monitor observer plus gauges fed by the lease and the mailbox.

Naming follows Prometheus conventions: base units (bytes, seconds), ``_total`` on counters,
bounded label sets (``result``, ``phase``, ``volume`` -- one series per monitored volume,
removed when the drive goes away). Each Service owns its own registry (no globals).
The HTTP endpoint is off by default and binds to 127.0.0.1 unless configured otherwise.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.registry import RestrictedRegistry

from autoextend import __version__
from autoextend.logs import get_logger
from autoextend.monitor.observer import (
    BackingStoreFull,
    DriveAtCap,
    DriveGone,
    DriveSeen,
    ExtendFinished,
    ExtendsInFlight,
    IoErrorAction,
    JobFailed,
    JobResumed,
    MigrationNoted,
    MonitorEvent,
    Paused,
    Resumed,
    ResumeLatency,
    StaleViewFound,
    Throttled,
    UnmanagedEnospc,
    VgFull,
    VmCheckFailed,
    WatermarkLeft,
)
from autoextend.monitor.protocols import OutcomeKind, PauseReason

log = get_logger("metrics")

JOB_KINDS = ("commit", "mirror", "backup")
STALE_VIEW_WHEN = ("start", "appear", "audit")
PHASES = ("wait", "decision", "extender", "request", "spm_extend", "extend", "refresh", "rearm",
          "total", "resume")
WATERMARK_LEFT_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0)
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build_info = Gauge("autoextend_build_info", "Build information", ["version"],
                                registry=r)
        self.build_info.labels(__version__).set(1)
        self.extend_requests = Counter(
            "autoextend_extend_requests_total",
            "Extension requests by result (ok, failed, rejected, capped)", ["result"],
            registry=r)
        for result in ("ok", "failed", "rejected", "capped"):
            self.extend_requests.labels(result)
        self.extend_duration = Histogram(
            "autoextend_extend_duration_seconds", "Extension duration by phase", ["phase"],
            buckets=BUCKETS, registry=r)
        self.enospc_pauses = Counter("autoextend_enospc_pauses_total",
                                     "VM pauses for lack of space", registry=r)
        self.pauses = Counter("autoextend_vm_pauses_total", "VM pauses seen, by reason",
                              ["reason"], registry=r)
        self.resumes = Counter("autoextend_resumes_total",
                               "VMs resumed automatically after an ENOSPC pause", registry=r)
        self.unmanaged_enospc_total = Counter(
            "autoextend_unmanaged_enospc_total",
            "ENOSPC pauses involving a drive autoextend does not manage (left paused)",
            registry=r)
        self.backing_store_full_total = Counter(
            "autoextend_backing_store_full_total",
            "ENOSPC pauses on a drive with room, repeated after a resume: the storage under "
            "the VG is full (never extended; resumed under the [resume] backoff), by VG",
            ["vg"], registry=r)
        self.io_error_actions_total = Counter(
            "autoextend_io_error_actions_total",
            "What autoextend did about I/O-error pauses (resume, kill), by reason",
            ["action", "reason"], registry=r)
        self.vm_check_failures_total = Counter(
            "autoextend_vm_check_failures_total",
            "Times handling one VM failed (retried with backoff)", registry=r)
        self.migrations_total = Counter(
            "autoextend_migrations_total",
            "Live migration state changes seen on this host, by role and phase",
            ["role", "phase"], registry=r)
        self.drives_monitored = Gauge("autoextend_drives_monitored", "Drives monitored",
                                      registry=r)
        self.in_flight = Gauge("autoextend_extends_in_flight", "Extensions in flight",
                               registry=r)
        self.at_cap = Counter("autoextend_drives_at_cap_total",
                              "Times a drive reached its maximum size", registry=r)
        self.vg_full_total = Counter("autoextend_vg_full_total",
                               "Extensions the volume group could not satisfy", registry=r)
        self.allocation = Gauge("autoextend_volume_allocation_bytes",
                                "Highest written offset in the volume", ["volume"], registry=r)
        self.physical = Gauge("autoextend_volume_physical_bytes", "Volume size", ["volume"],
                              registry=r)
        self.capacity = Gauge("autoextend_volume_capacity_bytes",
                              "Virtual disk size (guest view)", ["volume"], registry=r)
        self.cap = Gauge("autoextend_volume_cap_bytes", "Largest size the volume may reach",
                         ["volume"], registry=r)
        self.vms_paused = Gauge(
            "autoextend_vms_paused", "VMs paused right now, by reason", ["reason"], registry=r)
        for reason in PauseReason:
            self.vms_paused.labels(reason.value).set(0)
        self.job_targets = Gauge(
            "autoextend_job_targets_monitored",
            "Block-job targets monitored like drives, by job kind", ["job"], registry=r)
        self.job_failures = Counter(
            "autoextend_block_job_failures_total",
            "Block jobs that ended with an error, by job kind and reason (nospace, error)",
            ["job", "reason"], registry=r)
        self.job_resumes = Counter(
            "autoextend_block_job_resumes_total",
            "Block jobs resumed after their target was extended", ["job"], registry=r)
        for kind in JOB_KINDS:
            self.job_targets.labels(kind).set(0)
        self.stale_views = Counter(
            "autoextend_stale_views_total",
            "Views of a volume found smaller than its metadata size, by when: start (volume "
            "prepare refreshed one), appear (a VM appeared on it), audit (a running guest's "
            "view, at a full poll)", ["when"], registry=r)
        self.stale_view_pauses = Counter(
            "autoextend_stale_view_pauses_total",
            "Guests paused because they ran on a stale view (never resumed by autoextend)",
            registry=r)
        self.shrunk_view_pauses = Counter(
            "autoextend_shrunk_view_pauses_total",
            "Guests paused because their volume shrank under this host's view (view larger "
            "than the metadata size; never resumed by autoextend)", registry=r)
        for when in STALE_VIEW_WHEN:
            self.stale_views.labels(when)
        self.watermark_left = Histogram(
            "autoextend_extension_watermark_left_ratio",
            "Fraction of the watermark still free when each extension landed (near misses: "
            "near 0 the guest almost paused)", buckets=WATERMARK_LEFT_BUCKETS, registry=r)
        self.throttles = Counter(
            "autoextend_throttles_total",
            "Write limits the throttle set or tightened on a drive, by reason (SPM failover, "
            "extension overdue, write rate)", ["reason"], registry=r)
        for why in ("SPM failover", "extension overdue", "write rate"):
            self.throttles.labels(why)
        self._jobs: dict[tuple[str, str], str] = {}
        self._drives: set[tuple[str, str]] = set()
        self._paused: dict[str, PauseReason] = {}

    # ---- feeds from the lease and mailbox (callables evaluated at scrape time)

    def gauge_from(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        Gauge(name, doc, registry=self.registry).set_function(fn)

    def counter_from(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        """A counter whose value another component keeps (exposed as ``<name>_total``)."""
        self.registry.register(_CallbackCounter(name, doc, fn))

    def volume_gauge_from(self, name: str, doc: str, fn: Callable[[], dict[str, float]],
                          label: str = "volume") -> None:
        """A gauge per volume (or per value of ``label``) whose values another component
        keeps (read at scrape time)."""
        self.registry.register(_CallbackVolumeGauge(name, doc, fn, label))

    # ---- MonitorObserver

    def notify(self, event: MonitorEvent) -> None:
        match event:
            case DriveSeen():
                self._drive_seen(event)
            case DriveGone():
                self._drive_gone(event)
            case ExtendFinished():
                self._extend_finished(event)
            case ExtendsInFlight(count=count):
                self.in_flight.set(count)
            case ResumeLatency(seconds=seconds):
                self.extend_duration.labels("resume").observe(seconds)
            case Paused(vm=vm, reason=reason):
                self.pauses.labels(reason.value).inc()
                if reason is PauseReason.ENOSPC:
                    self.enospc_pauses.inc()
                self._set_paused(vm, reason)
            case Resumed(vm=vm, automatic=automatic):
                if automatic:
                    self.resumes.inc()
                self._set_paused(vm, None)
            case DriveAtCap():
                self.at_cap.inc()
            case VgFull():
                self.vg_full_total.inc()
            case UnmanagedEnospc():
                self.unmanaged_enospc_total.inc()
            case BackingStoreFull(volume=volume):
                self.backing_store_full_total.labels(volume.vg).inc()
            case IoErrorAction(action=action, reason=reason):
                self.io_error_actions_total.labels(action, reason).inc()
            case VmCheckFailed():
                self.vm_check_failures_total.inc()
            case JobFailed(kind=kind, reason=reason):
                self.job_failures.labels(kind, reason).inc()
            case JobResumed(kind=kind):
                self.job_resumes.labels(kind).inc()
            case MigrationNoted(role=role, phase=phase):
                self.migrations_total.labels(role, phase).inc()
            case WatermarkLeft(fraction=fraction):
                self.watermark_left.observe(fraction)
            case Throttled(reason=reason):
                self.throttles.labels(reason).inc()
            case StaleViewFound(action="shrunk"):
                self.shrunk_view_pauses.inc()
            case StaleViewFound(when=when, action=action):
                self.stale_views.labels(when).inc()
                if action == "pause":
                    self.stale_view_pauses.inc()

    def _drive_seen(self, event: DriveSeen) -> None:
        info, v = event.info, str(event.volume)
        self._drives.add((info.vm, info.drive))
        self.drives_monitored.set(len(self._drives))
        if info.job:
            self._jobs[(info.vm, info.drive)] = info.job
            self._count_jobs()
        self.allocation.labels(v).set(info.allocation)
        self.physical.labels(v).set(info.physical)
        self.capacity.labels(v).set(info.capacity)
        self.cap.labels(v).set(event.cap)

    def _drive_gone(self, event: DriveGone) -> None:
        self._drives.discard((event.vm, event.drive))
        if self._jobs.pop((event.vm, event.drive), None) is not None:
            self._count_jobs()
        self.drives_monitored.set(len(self._drives))
        if not any(name == event.vm for name, _ in self._drives):
            self._set_paused(event.vm, None)
        for gauge in (self.allocation, self.physical, self.capacity, self.cap):
            try:
                gauge.remove(str(event.volume))
            except KeyError:
                pass

    def _extend_finished(self, event: ExtendFinished) -> None:
        kind = event.kind
        self.extend_requests.labels("capped" if kind is None else kind.value).inc()
        for phase, seconds in event.phases.items():
            if phase in PHASES:
                self.extend_duration.labels(phase).observe(seconds)
        if kind is OutcomeKind.OK:
            self.physical.labels(str(event.volume)).set(event.size)

    def _count_jobs(self) -> None:
        kinds = set(self._jobs.values()) | set(JOB_KINDS)
        for kind in kinds:
            self.job_targets.labels(kind).set(sum(1 for k in self._jobs.values() if k == kind))

    def _set_paused(self, vm: str, reason: PauseReason | None) -> None:
        """Keep ``autoextend_vms_paused`` (what the "VM paused too long" alert reads)."""
        if reason is None:
            self._paused.pop(vm, None)
        else:
            self._paused[vm] = reason
        for r in PauseReason:
            self.vms_paused.labels(r.value).set(
                sum(1 for v in self._paused.values() if v is r))


class _CallbackVolumeGauge:
    def __init__(self, name: str, doc: str, fn: Callable[[], dict[str, float]],
                 label: str = "volume") -> None:
        self.name, self.doc, self.fn, self.label = name, doc, fn, label

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily(self.name, self.doc, labels=[self.label])
        for value_of, value in sorted(self.fn().items()):
            family.add_metric([value_of], value)
        yield family

    def describe(self) -> Any:
        return []


class _CallbackCounter:
    def __init__(self, name: str, doc: str, fn: Callable[[], float]) -> None:
        self.name, self.doc, self.fn = name, doc, fn

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily

        yield CounterMetricFamily(self.name, self.doc, value=self.fn())

    def describe(self) -> Any:
        return []


class LoopRegistry:
    """The registry as the HTTP server's thread sees it: every collection runs on the event
    loop. The callback gauges and collectors read state the loop owns (the monitor's VMs and
    drives, the capacity watcher's VGs); read from another thread, a dict could change size
    under the iteration and the scrape would fail with HTTP 500 (seen as the drives of a
    stopping guest went away)."""

    def __init__(self, registry: CollectorRegistry | RestrictedRegistry, token: Any) -> None:
        self._registry = registry
        self._token = token

    def collect(self) -> Any:
        return iter(anyio.from_thread.run_sync(lambda: list(self._registry.collect()),
                                               token=self._token))

    def restricted_registry(self, names: Any) -> LoopRegistry:
        assert isinstance(self._registry, CollectorRegistry)  # restricted only once
        return LoopRegistry(self._registry.restricted_registry(names), self._token)


async def serve_metrics(
    registry: CollectorRegistry, address: str, port: int,
    *, task_status: TaskStatus[tuple[str, int]] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve /metrics from prometheus-client's HTTP server (its own thread) until cancelled.

    ``task_status.started()`` reports the bound (address, port); port 0 picks a free one.
    """
    on_loop = LoopRegistry(registry, anyio.lowlevel.current_token())
    server, thread = await anyio.to_thread.run_sync(
        lambda: start_http_server(port, address, on_loop)
    )
    bound = server.server_address[:2]
    log.info("metrics endpoint up", address=bound[0], port=bound[1])
    try:
        task_status.started((str(bound[0]), int(bound[1])))
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_stop, server, thread)


def _stop(server: Any, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
