"""The capacity part of one service: the watcher, its gauges, the monitor's hooks, and the
``volume_reduce`` control command (see ``reduce.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio

from autoextend.capacity import metrics as capacity_metrics
from autoextend.capacity.published import PublishedSource
from autoextend.capacity.reduce import (
    Reducer,
    ReduceRefused,
    ReduceUnanswered,
    RemoteReduce,
    parse_volume,
)
from autoextend.capacity.sources import VgSource, source_for
from autoextend.capacity.watch import CapacityWatcher
from autoextend.clock import Clock
from autoextend.errors import AutoextendError
from autoextend.logs import get_logger
from autoextend.spm.errors import MailboxClosed, MailboxTimeout
from autoextend.spm.wire import OP_REDUCE, OP_REDUCE_CHECK, Status
from autoextend.volumes import VolumeRef

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from autoextend.config import Settings
    from autoextend.monitor.core import Monitor

log = get_logger("capacity")
STOPPED_QUEUE = 64
STOP_RETRIES = 20


def mailbox_reduce(cluster: Any) -> RemoteReduce:
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


def committed_by_vg(vms: list[dict[str, Any]]) -> dict[str, int]:
    """Sum of the caps of the volumes in the monitor's snapshot, per VG (each volume once)."""
    caps: dict[str, int] = {}
    for vm in vms:
        for d in vm["drives"]:
            caps[str(d["volume"])] = int(d["cap"])
    out: dict[str, int] = {}
    for volume, cap in caps.items():
        vg = volume.partition("/")[0]
        out[vg] = out.get(vg, 0) + cap
    return out


class CapacityPart:
    def __init__(
        self,
        settings: Settings,
        backend: Any,
        monitor: Monitor,
        clock: Clock,
        registry: CollectorRegistry,
        source: VgSource | None = None,
        cluster: Any = None,
    ) -> None:
        self.settings = settings
        self.monitor = monitor
        self.clock = clock
        self._stopped_send, self._stopped = anyio.create_memory_object_stream[
            tuple[str, list[VolumeRef]]](STOPPED_QUEUE)
        monitor.on_clean_stop = self._on_clean_stop
        self.reducer = Reducer(backend, settings, monitor.snapshot,
                               remote=None if cluster is None else mailbox_reduce(cluster))
        source = source or source_for(backend)
        self.published: PublishedSource | None = None
        if source is not None and cluster is not None:
            self.published = source = PublishedSource(
                cluster, source, settings.capacity, settings.lease.offset, clock)
        self.watcher: CapacityWatcher | None = None
        if source is not None and settings.capacity.enabled:
            self.watcher = CapacityWatcher(
                settings.capacity, source, clock, vgs=self._vgs,
                committed=lambda: committed_by_vg(monitor.snapshot()),
                on_space=monitor.space_added)
            monitor.space_gate = self.watcher.gate
            capacity_metrics.register(registry, capacity_metrics.CapacityCollector(
                self.watcher, lambda: (self.reducer.reduces, self.reducer.given_back)))

    def _vgs(self) -> set[str]:
        names = set(self.settings.lvm.vgs)
        for vm in self.monitor.snapshot():
            for d in vm["drives"]:
                names.add(str(d["volume"]).partition("/")[0])
        return names

    async def handle_reduce(self, request: dict[str, Any]) -> dict[str, Any]:
        """Control command ``volume_reduce``: ``{"volume": "vg/lv", "dry_run": bool}``."""
        volume = request.get("volume")
        if not isinstance(volume, str):
            raise ValueError("volume_reduce needs \"volume\": \"VG/LV\"")
        plan = await self.reducer.reduce(parse_volume(volume),
                                         dry_run=request.get("dry_run") is True)
        return plan.as_dict()

    def reconfigure(self, settings: Settings) -> None:
        self.settings = settings
        self.reducer.settings = settings
        if self.watcher is not None:
            self.watcher.settings = settings.capacity
        if self.published is not None:
            self.published.settings = settings.capacity

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._reduce_stopped)
            if self.watcher is not None:
                await self.watcher.run()

    def _on_clean_stop(self, vm: str, volumes: list[VolumeRef]) -> None:
        """``[policy] reduce_on_stop``: a guest shut down cleanly; reduce its volumes."""
        if not self.settings.policy.reduce_on_stop or not volumes:
            return
        try:
            self._stopped_send.send_nowait((vm, volumes))
        except anyio.WouldBlock:
            log.warning("too many stopped VMs queued for reduce; skipping", vm=vm)

    async def _reduce_stopped(self) -> None:
        async for vm, volumes in self._stopped:
            for volume in volumes:
                await self._reduce_after_stop(vm, volume)

    async def _reduce_after_stop(self, vm: str, volume: VolumeRef) -> None:
        """QEMU may hold the device a moment after the guest's shutdown: retry that
        refusal for up to 10 s; any other refusal is logged and ends the attempt."""
        for attempt in range(STOP_RETRIES):
            try:
                plan = await self.reducer.reduce(volume, exclude_vm=vm)
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
