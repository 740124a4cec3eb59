"""The monitor: turns hypervisor events into extensions, re-arms, and resumes.

Structure (structured concurrency, every task has an owner)::

    Monitor.run
    ├── dispatcher        routes hypervisor events to the VM they concern
    ├── hypervisor.run    discovery + connections, sends events (bounded stream)
    ├── poller            every poll_interval_s, asks each VM to re-check (safety net)
    └── one task per VM   its own bounded inbox and task group
        └── at most one extension task per drive

Invariants:

* At most one extension is in flight per drive (DriveState EXTENDING is the token).
* A VM is resumed only if it is paused for ENOSPC, and only once no drive that paused it
  still lacks room. Operator, migration and other-error pauses are never resumed.
* Never shrink, never pass the cap (``policy.next_size``).
* An event is acted on at once; the poller only catches what events missed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from autoextend.clock import Clock
from autoextend.errors import AutoextendError
from autoextend.logs import get_logger
from autoextend.lvm.volume import VolumeRef
from autoextend.monitor import overrides, policy
from autoextend.monitor.config import PolicySettings
from autoextend.monitor.drive import DriveState, ThresholdState
from autoextend.monitor.observer import MonitorObserver, NullObserver
from autoextend.monitor.protocols import (
    DriveInfo,
    DrivesChanged,
    EnospcError,
    Extender,
    ExtendOutcome,
    Hypervisor,
    HypervisorEvent,
    OutcomeKind,
    PauseReason,
    ThresholdCrossed,
    VmAppeared,
    VmGone,
    VmPaused,
    VmResumed,
)

log = get_logger("monitor")

PolicyResolver = Callable[[DriveInfo, VolumeRef], policy.DrivePolicy]

VM_INBOX_SIZE = 64
HYPERVISOR_STREAM_SIZE = 1024


class _Resync:
    """Re-read everything about the VM (after connect, hot-plug or a dropped event)."""


class _Poll:
    """Periodic safety-net check."""


_RESYNC = _Resync()
_POLL = _Poll()
VmMessage = HypervisorEvent | _Resync | _Poll


def default_policy_resolver(settings: PolicySettings) -> PolicyResolver:
    """Config defaults plus ``[[policy.overrides]]``."""
    return lambda info, volume: overrides.resolve(settings, info, volume)


@dataclass
class _Vm:
    name: str
    inbox: MemoryObjectSendStream[VmMessage]
    receive: MemoryObjectReceiveStream[VmMessage]
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    drives: dict[str, DriveState] = field(default_factory=dict)
    pause_reason: PauseReason | None = None
    expect_resume: bool = False
    resync_pending: bool = False
    failing: bool = False
    tg: TaskGroup | None = None

    def post(self, message: VmMessage) -> None:
        """Queue without blocking; a full inbox degrades to one pending resync."""
        try:
            self.inbox.send_nowait(message)
        except anyio.WouldBlock:
            self.resync_pending = True
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass


class Monitor:
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
    ) -> None:
        self.hypervisor = hypervisor
        self.extender = extender
        self.settings = settings
        self.clock = clock
        self.policy_for = policy_for or default_policy_resolver(settings)
        self.observer: MonitorObserver = observer or NullObserver()
        self.dry_run = dry_run
        self._vms: dict[str, _Vm] = {}
        self._tg: TaskGroup | None = None
        self._in_flight = 0

    # ----------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. ``started()`` once the hypervisor's first discovery is done."""
        send, receive = anyio.create_memory_object_stream[HypervisorEvent](
            HYPERVISOR_STREAM_SIZE
        )
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._dispatch, receive)
            await tg.start(self.hypervisor.run, send)
            tg.start_soon(self._poll_loop)
            log.info("monitor started", dry_run=self.dry_run)
            task_status.started()

    def reconfigure(
        self, settings: PolicySettings, policy_for: PolicyResolver | None, dry_run: bool
    ) -> None:
        """Apply a reloaded config. Drive states are kept; new numbers apply from the next
        decision (thresholds are re-armed by the next poll)."""
        self.settings = settings
        self.policy_for = policy_for or default_policy_resolver(settings)
        self.dry_run = dry_run
        for vm in self._vms.values():
            vm.post(_RESYNC)

    def snapshot(self) -> list[dict[str, Any]]:
        """What ``autoextend status`` shows: every VM and drive."""
        return [
            {
                "vm": vm.name,
                "paused": vm.pause_reason.value if vm.pause_reason else None,
                "drives": [d.snapshot() for d in vm.drives.values()],
            }
            for vm in self._vms.values()
        ]

    @property
    def extends_in_flight(self) -> int:
        return self._in_flight

    # ----------------------------------------------------------------- routing

    async def _dispatch(self, receive: MemoryObjectReceiveStream[HypervisorEvent]) -> None:
        async with receive:
            async for event in receive:
                if isinstance(event, VmGone):
                    self._drop_vm(event.vm)
                    continue
                vm = self._vms.get(event.vm) or self._add_vm(event.vm)
                vm.post(_RESYNC if isinstance(event, VmAppeared) else event)

    def _add_vm(self, name: str) -> _Vm:
        assert self._tg is not None
        send, receive = anyio.create_memory_object_stream[VmMessage](VM_INBOX_SIZE)
        vm = _Vm(name, send, receive)
        self._vms[name] = vm
        self._tg.start_soon(self._vm_main, vm, name=f"vm:{name}")
        log.info("vm added", vm=name)
        return vm

    def _drop_vm(self, name: str) -> None:
        vm = self._vms.pop(name, None)
        if vm is None:
            return
        vm.scope.cancel()
        vm.inbox.close()
        for d in vm.drives.values():
            self.observer.drive_gone(name, d.name, d.volume)
            if d.in_flight:
                self._count_in_flight(-1)
        log.info("vm gone", vm=name)

    async def _poll_loop(self) -> None:
        while True:
            await self.clock.sleep(self.settings.poll_interval_s)
            for vm in list(self._vms.values()):
                vm.post(_POLL)

    async def _vm_main(self, vm: _Vm) -> None:
        with vm.scope:
            async with anyio.create_task_group() as tg, vm.receive:
                vm.tg = tg
                async for message in vm.receive:
                    try:
                        await self._handle(vm, message)
                        if vm.resync_pending:
                            vm.resync_pending = False
                            await self._sync(vm)
                    except AutoextendError as exc:
                        # Once per outage at warning level, then quietly until it recovers
                        # (e.g. libvirtd down: every poll of every VM would fail).
                        report = log.debug if vm.failing else log.warning
                        report("vm check failed", vm=vm.name, error=str(exc))
                        vm.failing = True
                        vm.resync_pending = True
                    else:
                        if vm.failing:
                            vm.failing = False
                            log.info("vm check recovered", vm=vm.name)

    # ----------------------------------------------------------------- events

    async def _handle(self, vm: _Vm, message: VmMessage) -> None:
        now = self.clock.now()
        match message:
            case _Resync() | DrivesChanged():
                await self._sync(vm)
            case _Poll():
                await self._poll_vm(vm)
            case ThresholdCrossed(drive=name, threshold=thr, excess=excess):
                d = vm.drives.get(name)
                if d is None:
                    await self._sync(vm)
                    return
                if d.mark_exceeded(now):
                    log.info("threshold crossed", vm=vm.name, drive=name, threshold=thr,
                             excess=excess)
                    self._start_extension(vm, d)
            case EnospcError(drive=name):
                if name in vm.drives:
                    self._flag_enospc(vm, vm.drives[name], now)
                else:
                    self._flag_full_drives(vm)
            case VmPaused(reason=reason):
                if vm.pause_reason is not reason:
                    vm.pause_reason = reason
                    self.observer.paused(vm.name, reason)
                    log.info("vm paused", vm=vm.name, reason=reason.value)
                await self._maybe_resume(vm)
            case VmResumed():
                if vm.pause_reason is not None and not vm.expect_resume:
                    self.observer.resumed(vm.name, False)
                vm.pause_reason = None
                vm.expect_resume = False
            case _:
                pass

    def _flag_enospc(self, vm: _Vm, d: DriveState, now: float) -> None:
        if d.state is ThresholdState.DISABLED:
            d.enospc = True
            log.warning("enospc on a drive at its cap", vm=vm.name, drive=d.name,
                        volume=str(d.volume))
            return
        news = d.mark_exceeded(now, enospc=True)
        log.info("enospc", vm=vm.name, drive=d.name, new=news)
        if d.state is ThresholdState.EXCEEDED:
            self._start_extension(vm, d)

    # ----------------------------------------------------------------- sync & poll

    async def _sync(self, vm: _Vm) -> None:
        infos = await self.hypervisor.drives(vm.name)
        self._merge_drives(vm, infos, rearm=True)
        state = await self.hypervisor.run_state(vm.name)
        reason = None if state.running else (state.pause_reason or PauseReason.OTHER)
        if reason is not vm.pause_reason:
            if reason is not None:
                self.observer.paused(vm.name, reason)
            vm.pause_reason = reason
        if reason is PauseReason.ENOSPC:
            self._flag_full_drives(vm)
        for d in list(vm.drives.values()):
            await self._evaluate(vm, d)
        await self._maybe_resume(vm)

    async def _poll_vm(self, vm: _Vm) -> None:
        infos = await self.hypervisor.drives(vm.name)
        self._merge_drives(vm, infos, rearm=False)
        state = await self.hypervisor.run_state(vm.name)
        if state.running:
            vm.pause_reason = None
        elif vm.pause_reason is None:
            vm.pause_reason = state.pause_reason or PauseReason.OTHER
            self.observer.paused(vm.name, vm.pause_reason)
            log.info("vm paused (seen by poll)", vm=vm.name, reason=vm.pause_reason.value)
        if vm.pause_reason is PauseReason.ENOSPC:
            self._flag_full_drives(vm)
        for d in list(vm.drives.values()):
            await self._evaluate(vm, d)
        await self._maybe_resume(vm)

    def _merge_drives(self, vm: _Vm, infos: list[DriveInfo], *, rearm: bool) -> None:
        seen = set()
        for info in infos:
            volume = self.hypervisor.volume_of(info)
            if volume is None:
                continue
            seen.add(info.drive)
            d = vm.drives.get(info.drive)
            if d is None or d.info.path != info.path:
                if d is not None and d.in_flight:
                    self._count_in_flight(-1)
                pol = self.policy_for(info, volume)
                d = DriveState(info, volume, policy.cap(info.capacity, pol))
                vm.drives[info.drive] = d
                self.observer.drive_seen(info, volume, d.cap)
                log.info("drive added", vm=vm.name, drive=info.drive, volume=str(volume),
                         physical=info.physical, capacity=info.capacity)
                continue
            d.update_info(info)
            d.cap = policy.cap(info.capacity, self.policy_for(info, volume))
            self.observer.drive_seen(info, volume, d.cap)
            if rearm and not d.in_flight:
                d.disarmed()  # the hypervisor may have lost it: arm again below
        for name in set(vm.drives) - seen:
            d = vm.drives.pop(name)
            if d.in_flight:
                self._count_in_flight(-1)
            self.observer.drive_gone(vm.name, name, d.volume)
            log.info("drive removed", vm=vm.name, drive=name)

    def _flag_full_drives(self, vm: _Vm) -> None:
        """A VM paused for ENOSPC whose ENOSPC event we did not see: flag the drives that are
        inside their watermark. (The highest written offset QEMU reports does not always
        reach the device size at an ENOSPC, so "allocation >= physical" would miss some.)
        If none qualifies, resuming is safe: QEMU retries the write and tells us again."""
        now = self.clock.now()
        for d in vm.drives.values():
            if d.enospc or d.in_flight:
                continue
            pol = self.policy_for(d.info, d.volume)
            if policy.needs_extension(d.info.allocation, d.info.physical, pol):
                self._flag_enospc(vm, d, now)

    async def _evaluate(self, vm: _Vm, d: DriveState) -> None:
        """Decide what a drive needs, from its latest numbers. Never blocks on an extension."""
        if d.in_flight or d.name not in vm.drives:
            return
        info = d.info
        pol = self.policy_for(info, d.volume)
        now = self.clock.now()
        if info.capacity <= 0:
            log.warning("drive reports no capacity; not extending", vm=vm.name, drive=d.name)
            return
        if d.state is ThresholdState.EXCEEDED:
            if now >= d.retry_at:
                self._start_extension(vm, d)
            return
        full = policy.needs_extension(info.allocation, info.physical, pol) or d.enospc
        capped = policy.at_cap(info.physical, info.capacity, pol)
        if capped:
            if d.state is not ThresholdState.DISABLED:
                self._disable(vm, d)
            return
        if full:
            if d.mark_exceeded(now):
                log.info("drive needs extension (poll)", vm=vm.name, drive=d.name,
                         allocation=info.allocation, physical=info.physical)
            self._start_extension(vm, d)
            return
        if d.state is ThresholdState.DISABLED:
            d.disarmed()
        wanted = policy.threshold(info.physical, pol)
        lost = d.state is ThresholdState.SET and (info.threshold == 0 or d.threshold != wanted)
        if d.state is ThresholdState.UNSET or lost:
            await self._arm(vm, d, wanted)

    async def _arm(self, vm: _Vm, d: DriveState, threshold: int) -> None:
        if self.dry_run:
            log.info("dry-run: would arm threshold", vm=vm.name, drive=d.name,
                     threshold=threshold)
        else:
            await self.hypervisor.set_threshold(vm.name, d.info, threshold)
        d.armed(threshold)
        log.debug("threshold armed", vm=vm.name, drive=d.name, threshold=threshold,
                  physical=d.info.physical)

    def _disable(self, vm: _Vm, d: DriveState) -> None:
        d.reached_cap()
        self.observer.drive_at_cap(vm.name, d.name, d.volume)
        log.warning("drive reached its cap; no further extension", vm=vm.name, drive=d.name,
                    volume=str(d.volume), physical=d.info.physical, cap=d.cap)

    # ----------------------------------------------------------------- extension

    def _count_in_flight(self, delta: int) -> None:
        self._in_flight += delta
        self.observer.extends_in_flight(self._in_flight)

    def _start_extension(self, vm: _Vm, d: DriveState) -> None:
        if d.state is not ThresholdState.EXCEEDED or vm.tg is None:
            return
        d.start_extend()
        self._count_in_flight(+1)
        vm.tg.start_soon(self._extend, vm, d, name=f"extend:{vm.name}:{d.name}")

    async def _extend(self, vm: _Vm, d: DriveState) -> None:
        """Extend until the drive has its watermark of room (or is capped); one task owns it."""
        bound = log.bind(vm=vm.name, drive=d.name, volume=str(d.volume))
        try:
            while True:
                again = await self._extend_once(vm, d, bound)
                if not again:
                    break
        except AutoextendError as exc:
            if d.in_flight:
                delay = self._retry_delay(d, OutcomeKind.FAILED)
                d.extend_failed(self.clock.now(), str(exc), delay)
            bound.warning("extension failed", error=str(exc), attempts=d.attempts)
        finally:
            if vm.drives.get(d.name) is d:
                self._count_in_flight(-1)
        if vm.drives.get(d.name) is d:
            try:
                await self._maybe_resume(vm)
            except AutoextendError as exc:
                bound.warning("resume check failed", error=str(exc))

    def _retry_delay(self, d: DriveState, kind: OutcomeKind) -> float:
        if kind is OutcomeKind.REJECTED:
            return self.settings.retry_max_s
        return policy.backoff(d.attempts + 1, self.settings.retry_initial_s,
                              self.settings.retry_max_s)

    async def _fresh(self, vm: _Vm, d: DriveState) -> DriveInfo:
        for info in await self.hypervisor.drives(vm.name):
            if info.drive == d.name:
                d.update_info(info)
                return info
        raise DriveVanished(vm.name, d.name)

    async def _extend_once(self, vm: _Vm, d: DriveState, bound: Any) -> bool:
        """One extension. Returns True when the drive needs another one right away."""
        t_event = d.exceeded_at if d.exceeded_at is not None else self.clock.now()
        t_start = self.clock.now()
        info = await self._fresh(vm, d)
        pol = self.policy_for(info, d.volume)
        target = policy.next_size(info.physical, info.capacity, pol)
        if target <= info.physical:
            self._disable(vm, d)
            self.observer.extend_finished(vm.name, d.name, d.volume, None, info.physical, {})
            return False
        if not d.enospc and not policy.needs_extension(info.allocation, info.physical, pol):
            # A stale event (the drive grew since), or someone else extended it already.
            new_threshold = policy.threshold(info.physical, pol)
            d.not_needed(new_threshold)
            bound.info("extension not needed", allocation=info.allocation,
                       physical=info.physical)
            try:
                await self.hypervisor.set_threshold(vm.name, info, new_threshold)
            except AutoextendError:
                d.disarmed()
                raise
            return False
        if self.dry_run:
            bound.info("dry-run: would extend", physical=info.physical, size=target)
            d.extend_failed(self.clock.now(), "dry-run", self.settings.retry_max_s)
            return False
        bound.info("extending", physical=info.physical, size=target,
                   allocation=info.allocation, wait_s=round(t_start - t_event, 6))
        outcome: ExtendOutcome | None = None
        with anyio.move_on_after(self.settings.extend_timeout_s):
            outcome = await self.extender.extend(d.volume, target)
        if outcome is None:
            outcome = ExtendOutcome(OutcomeKind.FAILED, 0,
                                    f"no answer within {self.settings.extend_timeout_s} s",
                                    code="timeout")
        t_extended = self.clock.now()
        if outcome.ok:
            info = await self._fresh(vm, d)
            if info.physical < target:
                outcome = ExtendOutcome(
                    OutcomeKind.FAILED, info.physical,
                    f"extended to {outcome.size} but the drive shows {info.physical} < {target}",
                )
        if not outcome.ok:
            delay = self._retry_delay(d, outcome.kind)
            d.extend_failed(self.clock.now(), outcome.reason, delay)
            self.observer.extend_finished(vm.name, d.name, d.volume, outcome.kind, outcome.size,
                                          {"extender": t_extended - t_start})
            if outcome.code == "vg_full":
                self.observer.vg_full(vm.name, d.name, d.volume)
                bound.error("volume group cannot satisfy the extension", size=target,
                            reason=outcome.reason, retry_in_s=round(delay, 3))
            else:
                bound.warning("extension failed", result=outcome.kind.value,
                              reason=outcome.reason, code=outcome.code, attempts=d.attempts,
                              retry_in_s=round(delay, 3))
            return False
        if policy.at_cap(info.physical, info.capacity, pol):
            d.extend_done(0)
            self._disable(vm, d)
            new_threshold = 0
        else:
            new_threshold = policy.threshold(info.physical, pol)
            d.extend_done(new_threshold)
            try:
                await self.hypervisor.set_threshold(vm.name, info, new_threshold)
            except AutoextendError as exc:
                # The extension itself succeeded: do not extend again, just arm later.
                d.disarmed()
                bound.warning("re-arming failed; the next poll arms it", error=str(exc))
        t_armed = self.clock.now()
        phases = {
            **outcome.phases,
            "wait": t_start - t_event,
            "extender": t_extended - t_start,
            "rearm": t_armed - t_extended,
            "total": t_armed - t_event,
        }
        self.observer.extend_finished(vm.name, d.name, d.volume, OutcomeKind.OK, info.physical,
                                      phases)
        bound.info("extended", size=info.physical, threshold=new_threshold,
                   duration_s=phases["total"],
                   phases={k: round(v, 6) for k, v in phases.items()})
        if d.state is ThresholdState.SET and policy.needs_extension(
            info.allocation, info.physical, pol
        ):
            d.mark_exceeded(self.clock.now())
            d.start_extend()
            return True
        return False

    # ----------------------------------------------------------------- resume

    async def _maybe_resume(self, vm: _Vm) -> None:
        if vm.pause_reason is not PauseReason.ENOSPC:
            return
        if any(d.enospc or d.in_flight for d in vm.drives.values()):
            return
        # The ENOSPC event may have been missed: a drive whose writes ran past its end
        # still lacks room even if nobody flagged it.
        infos = {i.drive: i for i in await self.hypervisor.drives(vm.name)}
        for d in vm.drives.values():
            info = infos.get(d.name)
            if info is not None:
                d.update_info(info)
        self._flag_full_drives(vm)
        if any(d.enospc or d.in_flight for d in vm.drives.values()):
            return
        if self.dry_run:
            log.info("dry-run: would resume", vm=vm.name)
            return
        await self.hypervisor.resume(vm.name)
        vm.expect_resume = True
        vm.pause_reason = None
        self.observer.resumed(vm.name, True)
        log.info("vm resumed", vm=vm.name)


class DriveVanished(AutoextendError):
    def __init__(self, vm: str, drive: str) -> None:
        self.vm = vm
        self.drive = drive
        super().__init__(f"{vm}: drive {drive} is gone")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
