"""The capacity part of one service: the watcher, its gauges, the monitor's gate, reduce on
a clean stop, and the ``volume_reduce`` control command (see ``reduce.py``).

Built before the monitor, which takes two things from it at construction: :meth:`gate`
(its ``space_gate``) and the part itself as an observer (:meth:`notify`: a
:class:`~autoextend.monitor.observer.CleanStop` queues the VM's volumes for
``[policy] reduce_on_stop``). What the part needs of the monitor is its typed query of the
volumes in use and its ``space_added`` (:class:`MonitorQueries`), given to :meth:`run`
and :meth:`handle_reduce`: no object is wired into another after construction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from autoextend.capacity import metrics as capacity_metrics
from autoextend.capacity.committed import CommittedPublisher, CommittedScanner
from autoextend.capacity.published import PoolMember, PublishedSource
from autoextend.capacity.reduce import (
    ReduceBackend,
    Reducer,
    ReduceRefused,
    ReduceUnanswered,
    RemoteReduce,
    SharedRefusal,
    VolumesInUse,
    parse_volume,
)
from autoextend.capacity.watch import CapacityWatcher
from autoextend.clock import Clock
from autoextend.errors import AutoextendError
from autoextend.logs import get_logger
from autoextend.monitor.observer import CleanStop, MonitorEvent
from autoextend.spm.errors import MailboxClosed, MailboxTimeout
from autoextend.spm.wire import OP_REDUCE, OP_REDUCE_CHECK, Reply, Status
from autoextend.volumes import ListsVolumes, ReportsVgFigures, VolumeRef

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from autoextend.config import Settings

log = get_logger("capacity")
STOPPED_QUEUE = 64
STOP_RETRIES = 20


class CapacityBackend(ReduceBackend, ReportsVgFigures, Protocol):
    """The host's pool backend as the capacity part uses it: the volume boundary (a reduce,
    the holders, the sizes) and the VGs' figures."""


class MailboxHost(Protocol):
    """This host's side of the SPM mailbox (``spm.host.HostMailbox``), as a reduce uses it.
    Raises MailboxTimeout or MailboxClosed when no reply comes."""

    async def request(self, volume: VolumeRef, size: int, *, op: int = ...) -> Reply: ...


class Pool(PoolMember, Protocol):
    """Mailbox mode: this host in the pool (the cluster agent): the published figures'
    storage and lease, and the mailbox once it has joined (None before)."""

    @property
    def mailbox(self) -> MailboxHost | None: ...


class MonitorQueries(VolumesInUse, Protocol):
    """What the capacity part asks of the monitor while it runs."""

    def caps_in_use(self) -> Mapping[VolumeRef, int]:
        """Each volume in use now, once, with the most it may grow to (the watcher's look,
        every ``poll_interval_s``: no per-drive record is built for it)."""
        ...

    def space_added(self, vg: str) -> int:
        """The VG gained free space: wake its drives waiting to retry; how many woke."""
        ...


def mailbox_reduce(cluster: Pool) -> RemoteReduce:
    """Mailbox mode: a REDUCE (or, ``check``, a REDUCE_CHECK) request to the SPM; the size
    it leaves (or would), or ReduceRefused, or ReduceUnanswered (it may have acted)."""
    async def remote(volume: VolumeRef, size: int, check: bool) -> int:
        mailbox = cluster.mailbox
        if mailbox is None:
            raise ReduceRefused(volume, "this host has not joined the pool yet")
        try:
            reply = await mailbox.request(volume, size,
                                          op=OP_REDUCE_CHECK if check else OP_REDUCE)
        except (MailboxTimeout, MailboxClosed) as exc:
            raise ReduceUnanswered(volume, f"no answer from the SPM ({exc})") from exc
        if reply.status is Status.OK:
            return int(reply.size)
        raise ReduceRefused(volume, f"the SPM refused: {reply.text or reply.reason.name}")

    return remote


def committed_of(caps: Mapping[VolumeRef, int]) -> dict[str, int]:
    """Sum of ``caps`` per VG."""
    out: dict[str, int] = {}
    for volume, cap in caps.items():
        out[volume.vg] = out.get(volume.vg, 0) + cap
    return out


class CapacityPart:
    def __init__(
        self,
        settings: Settings,
        backend: CapacityBackend,
        clock: Clock,
        registry: CollectorRegistry,
        *,
        cluster: Pool | None = None,
        on_level: Callable[[], object] = lambda: None,
        lister: ListsVolumes | None = None,
        shared: SharedRefusal | None = None,
    ) -> None:
        """``cluster``: mailbox mode (None: local mode); ``on_level``: a VG's level changed
        (the service's STATUS= line); ``lister``: every volume of the pool's VGs (mailbox
        mode: the SPM publishes their committed space, ``committed.py``); ``shared``: local
        mode's look at the other hosts' in-use records (``sharedgate.py``)."""
        self.settings = settings
        self.clock = clock
        self._stopped_send, self._stopped = anyio.create_memory_object_stream[
            tuple[str, tuple[VolumeRef, ...]]](STOPPED_QUEUE)
        self.reducer = Reducer(backend, settings,
                               remote=None if cluster is None else mailbox_reduce(cluster),
                               shared=shared)
        source: ReportsVgFigures = backend
        self.published: PublishedSource | None = None
        if cluster is not None:
            self.published = source = PublishedSource(
                cluster, backend, settings.capacity, settings.lease.offset, clock)
        self.watcher: CapacityWatcher | None = None
        self.committed: CommittedPublisher | None = None  # pool admission's figures
        if cluster is not None and lister is not None and settings.capacity.enabled:
            self.committed = CommittedPublisher(
                cluster, CommittedScanner(lister, clock), settings.capacity,
                settings.lvm.vgs, settings.lease.offset, clock)
        if settings.capacity.enabled:
            self.watcher = CapacityWatcher(settings.capacity, source, clock, on_level=on_level)
            capacity_metrics.register(registry, capacity_metrics.CapacityCollector(
                self.watcher, lambda: (self.reducer.reduces, self.reducer.given_back)))

    # ----------------------------------------------------------------- for the monitor

    def gate(self, volume: VolumeRef, paused_enospc: bool) -> str | None:
        """The monitor's ``space_gate``: why an extension of ``volume`` must wait (its VG is
        at its critical level and the VM is not paused on ENOSPC), or None."""
        if self.watcher is None:
            return None
        return self.watcher.gate(volume, paused_enospc)

    def notify(self, event: MonitorEvent) -> None:
        """A monitor observer: a guest shut down cleanly; reduce its volumes
        (``[policy] reduce_on_stop``)."""
        match event:
            case CleanStop(vm=vm, volumes=volumes):
                self._on_clean_stop(vm, volumes)

    def _vgs(self, volumes: Iterable[VolumeRef]) -> set[str]:
        names = set(self.settings.lvm.vgs)
        names.update(volume.vg for volume in volumes)
        return names

    async def handle_reduce(self, request: dict[str, Any],
                            monitor: VolumesInUse) -> dict[str, Any]:
        """Control command ``volume_reduce``: ``{"volume": "vg/lv", "dry_run": bool}``."""
        volume = request.get("volume")
        if not isinstance(volume, str):
            raise ValueError("volume_reduce needs \"volume\": \"VG/LV\"")
        plan = await self.reducer.reduce(parse_volume(volume), monitor,
                                         dry_run=request.get("dry_run") is True)
        return plan.as_dict()

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings
        self.reducer.settings = settings
        if self.watcher is not None:
            self.watcher.settings = settings.capacity
        if self.published is not None:
            self.published.settings = settings.capacity
        if self.committed is not None:
            self.committed.settings = settings.capacity

    async def run(self, monitor: MonitorQueries) -> None:
        """The watcher's looks and the reduces after clean stops, until cancelled."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._reduce_stopped, monitor)
            if self.committed is not None:
                tg.start_soon(self.committed.run)
            if self.watcher is not None:
                await self._watch(self.watcher, monitor)

    async def _watch(self, watcher: CapacityWatcher, monitor: MonitorQueries) -> None:
        """Every ``poll_interval_s``: look at the pool's VGs and those of the volumes in
        use; wake the drives of a VG that gained space."""
        while True:
            caps = monitor.caps_in_use()
            for vg in await watcher.look(self._vgs(caps), committed_of(caps)):
                monitor.space_added(vg)
            await self.clock.sleep(watcher.settings.poll_interval_s)

    def _on_clean_stop(self, vm: str, volumes: tuple[VolumeRef, ...]) -> None:
        """``[policy] reduce_on_stop``: queue the volumes (never blocks the monitor)."""
        if not self.settings.policy.reduce_on_stop or not volumes:
            return
        try:
            self._stopped_send.send_nowait((vm, volumes))
        except anyio.WouldBlock:
            log.warning("too many stopped VMs queued for reduce; skipping", vm=vm)

    async def _reduce_stopped(self, monitor: VolumesInUse) -> None:
        async for vm, volumes in self._stopped:
            for volume in volumes:
                await self._reduce_after_stop(vm, volume, monitor)

    async def _reduce_after_stop(self, vm: str, volume: VolumeRef,
                                 monitor: VolumesInUse) -> None:
        """QEMU may hold the device a moment after the guest's shutdown: retry that
        refusal for up to 10 s; any other refusal is logged and ends the attempt."""
        for attempt in range(STOP_RETRIES):
            try:
                plan = await self.reducer.reduce(volume, monitor, exclude_vm=vm)
            except ReduceRefused as exc:
                if "open on this host" in exc.reason and attempt + 1 < STOP_RETRIES:
                    await self.clock.sleep(0.5)
                    continue
                log.warning("reduce on stop refused", vm=vm, volume=str(volume),
                            reason=exc.reason)
                return
            except AutoextendError as exc:
                log.warning("reduce on stop failed", vm=vm, volume=str(volume), error=str(exc))
                return
            log.info("reduce on stop", vm=vm, volume=str(volume), given_back=plan.given_back)
            return

    def status(self) -> dict[str, Any]:
        return {
            "vgs": self.watcher.snapshot() if self.watcher is not None else [],
            "reduces": self.reducer.reduces,
            "reduced_bytes": self.reducer.given_back,
        }

    def summary(self) -> str:
        return self.watcher.summary() if self.watcher is not None else ""
