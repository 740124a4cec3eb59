"""The monitor: turns hypervisor events into extensions, re-arms, and resumes.

Structure (structured concurrency, every task has an owner)::

    Monitor.run
    ├── dispatcher        routes hypervisor events to the VM they concern
    ├── hypervisor.run    discovery + connections, sends events (bounded stream)
    ├── poller            every poll_interval_s, asks each VM to re-check (safety net)
    └── one task per VM   its own bounded inbox and task group
        ├── at most one extension task per drive   (monitor/extension.py)
        └── at most one live timer (resume backoff, retry, kill deadline)

The VM task is the only owner of the VM's pause state (``vmstate.VmMachine``); every look at
the VM goes through one resync path (``monitor/resync.py``).

Invariants:

* At most one extension is in flight per drive (DriveState EXTENDING is the token).
* autoextend resumes only what it caused: an ENOSPC pause, once every managed drive that
  paused it has room, and never one that involves a drive it does not manage. I/O-error
  pauses follow ``[resume] policy``. Operator, migration and unknown pauses are never resumed.
* Never shrink, never pass the cap (``policy.next_size``).
* An event is acted on at once; the poller only catches what events missed.
* No host ever runs the guest through a view of its volume smaller than one it wrote
  through: live migration defers the source's refreshes and refreshes the destination
  first (``monitor/migration.py`` has the invariant and the argument).
* An exception while handling one VM ends that VM's handling only (logged, counted, retried
  with backoff), never the monitor.
"""

from __future__ import annotations

import math
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from autoextend.clock import Clock
from autoextend.errors import AutoextendError
from autoextend.monitor import policy, pollplan
from autoextend.monitor.config import PolicySettings, ResumeSettings
from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.extension import DriveVanished, event_info
from autoextend.monitor.migrating import VolumeViews
from autoextend.monitor.observer import DriveGone, MonitorObserver, NullObserver, VmCheckFailed
from autoextend.monitor.probe import StorageProbe, direct_read_probe
from autoextend.monitor.protocols import (
    DrivesChanged,
    EnospcError,
    Extender,
    Hypervisor,
    HypervisorEvent,
    JobEnded,
    MigrationChanged,
    ThresholdCrossed,
    VmAppeared,
    VmGone,
    VmPaused,
    VmResumed,
)
from autoextend.monitor.resync import Resync
from autoextend.monitor.vm import (
    POLL,
    RESYNC,
    VM_INBOX_SIZE,
    LeaseOk,
    PolicyResolver,
    Poll,
    ResyncRequest,
    Vm,
    VmMessage,
    default_policy_resolver,
    log,
)
from autoextend.monitor.vmstate import ResumePolicy, VmMachine
from autoextend.volumes import VolumeRef

__all__ = ["DriveVanished", "Monitor", "default_policy_resolver", "percentile"]

HYPERVISOR_STREAM_SIZE = 1024


class Monitor(Resync):
    def __init__(
        self,
        hypervisor: Hypervisor,
        extender: Extender,
        settings: PolicySettings,
        clock: Clock,
        *,
        policy_for: PolicyResolver | None = None,
        observer: MonitorObserver | None = None,
        dry_run: bool = False,
        resume: ResumeSettings | None = None,
        probe: StorageProbe | None = None,
        lease_ok: LeaseOk | None = None,
        extend_deadline_s: float | None = None,
        views: VolumeViews | None = None,
    ) -> None:
        resume = resume or ResumeSettings()
        super().__init__(
            hypervisor, extender, settings, clock, policy_for=policy_for,
            observer=observer or NullObserver(), dry_run=dry_run, resume=resume,
            probe=probe or direct_read_probe(resume.probe_timeout_s), lease_ok=lease_ok,
            extend_deadline_s=extend_deadline_s,
        )
        self._tg: TaskGroup | None = None
        self._events_in: MemoryObjectReceiveStream[HypervisorEvent] | None = None
        self._next_poll = -math.inf  # when the poller wakes next (not started: now)
        self.polls = 0  # poll rounds posted so far (a test waits for N of them, then idle())
        self.views = views  # this host's refresh, for migrations (monitor/migrating.py)

    # ----------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. ``started()`` once the hypervisor's first discovery is done."""
        send, receive = anyio.create_memory_object_stream[HypervisorEvent](
            HYPERVISOR_STREAM_SIZE
        )
        self._events_in = receive
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._dispatch, receive)
            await tg.start(self.hypervisor.run, send)
            tg.start_soon(self._poll_loop)
            log.info("monitor started", dry_run=self.dry_run)
            task_status.started()

    def reconfigure(
        self, settings: PolicySettings, policy_for: PolicyResolver | None, dry_run: bool,
        resume: ResumeSettings | None = None, *, extend_deadline_s: float | None = None,
    ) -> None:
        """Apply a reloaded config. Drive states are kept; new numbers apply from the next
        decision (thresholds are re-armed by the next poll)."""
        self.settings = settings
        if extend_deadline_s is not None:
            self._extend_deadline_s = extend_deadline_s
        self.policy_for = policy_for or default_policy_resolver(settings)
        self.dry_run = dry_run
        if resume is not None:
            self.resume_settings = resume
        for vm in self._vms.values():
            self._set_resume_policy(vm)
            vm.post(RESYNC)

    def idle(self, *, extensions: bool = True) -> bool:
        """True when the monitor has nothing left to do at the clock's current time: every
        hypervisor event is routed, every VM's inbox is handled (no VM mid-way through a
        message), no poll or timer is due, and (with ``extensions``) no extension is in
        flight. The synchronisation point for "nothing happened" in tests (with a manual
        clock it is exact); never a sleep."""
        if self._events_in is None or not _parked(self._events_in):
            return False
        now = self.clock.now()
        if now >= self._next_poll:
            return False
        if extensions and self._in_flight:
            return False
        for vm in self._vms.values():
            if not _parked(vm.receive):
                return False
            if vm.timer_at is not None and vm.timer_at <= now:
                return False
        return True

    def snapshot(self) -> list[dict[str, Any]]:
        """What ``autoextend status`` shows: every VM and drive."""
        return [
            {
                "vm": vm.name,
                "paused": vm.machine.describe(),
                "state": vm.machine.state.value,
                "resume_policy": vm.machine.policy.value,
                "resume_attempts": vm.machine.resume_attempts,
                "last_action": vm.machine.last_action,
                "migration": vm.machine.migration.value,
                "drives": [d.snapshot() for d in vm.drives.values()],
            }
            for vm in self._vms.values()
        ]

    def space_added(self, vg: str) -> int:
        """The VG gained free space: every drive of it waiting to retry a failed extension
        retries now, not at its next backoff step. Returns how many drives were woken."""
        now = self.clock.now()
        woken = 0
        for vm in self._vms.values():
            hit = [d for d in vm.drives.values() if d.volume.vg == vg and d.retry_now(now)]
            if hit:
                woken += len(hit)
                vm.post(POLL)
                log.info("volume group gained space; retrying now", vm=vm.name, vg=vg,
                         drives=[d.name for d in hit])
        return woken

    # ----------------------------------------------------------------- routing

    async def _dispatch(self, receive: MemoryObjectReceiveStream[HypervisorEvent]) -> None:
        async with receive:
            async for event in receive:
                if isinstance(event, VmGone):
                    volumes = self._drop_vm(event.vm)
                    if event.clean and volumes is not None and self.on_clean_stop is not None:
                        self.on_clean_stop(event.vm, volumes)
                    continue
                vm = self._vms.get(event.vm) or self._add_vm(event.vm)
                vm.post(RESYNC if isinstance(event, VmAppeared) else event)

    def _set_resume_policy(self, vm: Vm) -> None:
        name, kill_after = self.resume_settings.for_vm(vm.name)
        vm.machine.policy = ResumePolicy(name)
        vm.machine.kill_after_s = kill_after

    def _add_vm(self, name: str) -> Vm:
        assert self._tg is not None
        send, receive = anyio.create_memory_object_stream[VmMessage](VM_INBOX_SIZE)
        vm = Vm(name, send, receive, machine=VmMachine())
        self._set_resume_policy(vm)
        self._vms[name] = vm
        self._tg.start_soon(self._vm_main, vm, name=f"vm:{name}")
        log.info("vm added", vm=name)
        return vm

    def _drop_vm(self, name: str) -> list[VolumeRef] | None:
        """Forget a VM; the volumes of its drives, or None if it was not known."""
        vm = self._vms.pop(name, None)
        if vm is None:
            return None
        vm.scope.cancel()
        vm.inbox.close()
        # Counted here, once: the cancelled extension tasks see their drive gone and do not
        # count it again (a task cancelled before it ran would not count it at all).
        drives, vm.drives = vm.drives, {}
        for d in drives.values():
            self.observer.notify(DriveGone(name, d.name, d.volume))
            if d.in_flight:
                self._count_in_flight(-1)
        log.info("vm gone", vm=name)
        return sorted({d.volume for d in drives.values()})

    async def _poll_loop(self) -> None:
        polls = 0
        while True:
            self._next_poll = self.clock.now() + self.settings.poll_interval_s
            await self.clock.sleep(self.settings.poll_interval_s)
            polls += 1
            every = pollplan.full_poll_every(self.settings.poll_interval_s,
                                             self.settings.full_poll_interval_s)
            full = polls % every == 0
            for vm in list(self._vms.values()):
                if full or pollplan.needs_poll(vm):
                    vm.post(POLL)
            self.polls += 1

    async def _vm_main(self, vm: Vm) -> None:
        with vm.scope:
            async with anyio.create_task_group() as tg, vm.receive:
                vm.tg = tg
                async for message in vm.receive:
                    if vm.failures and self.clock.now() < vm.retry_at:
                        vm.resync_pending = True  # backing off after a failure
                        continue
                    await self._handle_safely(vm, message)

    async def _handle_safely(self, vm: Vm, message: VmMessage) -> None:
        """Handle one message; any exception ends this attempt only, retried with backoff."""
        try:
            await self._handle(vm, message)
            if vm.resync_pending:
                vm.resync_pending = False
                await self._resync(vm, rearm=True)
        except Exception as exc:  # noqa: BLE001 - one VM's failure must not stop the others
            self._failed(vm, exc)
        else:
            if vm.failures:
                vm.failures = 0
                log.info("vm check recovered", vm=vm.name)

    def _failed(self, vm: Vm, exc: Exception) -> None:
        """Count, log and schedule the retry of a failed VM check. Never raises."""
        try:
            vm.failures += 1
            delay = policy.backoff(vm.failures, self.settings.retry_initial_s,
                                   self.settings.retry_max_s)
            vm.retry_at = self.clock.now() + delay
            vm.resync_pending = True
            self._wake_at(vm, vm.retry_at)
            # Once per outage at warning level, then quietly until it recovers
            # (e.g. libvirtd down: every poll of every VM would fail).
            if isinstance(exc, AutoextendError):
                report = log.debug if vm.failures > 1 else log.warning
                report("vm check failed", vm=vm.name, error=str(exc),
                       retry_in_s=round(delay, 3))
            else:
                log.error("vm check failed on an unexpected error", vm=vm.name,
                          error=repr(exc), retry_in_s=round(delay, 3),
                          exc_info=vm.failures == 1)
            self.observer.notify(VmCheckFailed(vm.name, str(exc) or type(exc).__name__))
        except Exception as again:  # noqa: BLE001 - e.g. an observer that raises
            log.error("vm failure handling failed", vm=vm.name, error=repr(again))
            vm.resync_pending = True

    # ----------------------------------------------------------------- events

    async def _handle(self, vm: Vm, message: VmMessage) -> None:
        now = self.clock.now()
        match message:
            case ResyncRequest() | DrivesChanged():
                await self._resync(vm, rearm=True)
            case Poll():
                await self._resync(vm, rearm=False)
            case ThresholdCrossed(drive=name, threshold=thr, excess=excess):
                d = vm.drives.get(name)
                if d is None:
                    await self._resync(vm, rearm=True)
                    return
                armed = d.state is ThresholdState.SET and d.threshold == thr and thr > 0
                if d.mark_exceeded(now):
                    log.info("threshold crossed", vm=vm.name, drive=name, threshold=thr,
                             excess=excess)
                    # The event names the threshold we armed on the size we know: the
                    # decision needs no fresh query (the allocation is in the event).
                    self._start_extension(vm, d, event_info(d.info, thr, excess)
                                          if armed else None)
            case EnospcError(drive=name) if name in vm.drives:
                self._flag_enospc(vm, vm.drives[name], now)
            case JobEnded():
                self._job_ended(vm, message)
            case MigrationChanged():
                vm.machine.migration_stale = True
                await self._resync(vm, rearm=False)
            case EnospcError() | VmPaused() | VmResumed():
                # Which drives failed, and whether they are ours, comes from a fresh look.
                await self._resync(vm, rearm=False)
            case _:
                pass


def _parked(stream: MemoryObjectReceiveStream[Any]) -> bool:
    """Its reader has taken everything and waits for more (an item handed straight to a
    waiting reader is not in the buffer, but that reader is no longer waiting)."""
    stats = stream.statistics()
    return stats.current_buffer_used == 0 and stats.tasks_waiting_receive > 0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
