"""The extension task: one per drive at most, owned by its VM's task group.

It extends until the drive has its watermark of room (or is at its cap), then asks the VM's
task to look again (which re-arms and resumes): the VM task stays the only owner of the VM's
pause state. What one extension does is decided by the pure ``plan.plan``; this module
carries it out. The extender checks the new size (its contract: "visible at that size on
this host"); the monitor does not check it a second time. The wait is bounded by one
deadline, :attr:`MonitorContext.extend_deadline_s` (see ``autoextend/timeouts.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio

from autoextend.errors import AutoextendError
from autoextend.monitor import plan, policy
from autoextend.monitor.context import MonitorContext, VmView
from autoextend.monitor.drive import DriveState, ThresholdState
from autoextend.monitor.migrating import MigrationSteps, effective
from autoextend.monitor.observer import ExtendFinished, VgFull, VmCheckFailed
from autoextend.monitor.protocols import DriveInfo, ExtendOutcome, OutcomeCode, OutcomeKind
from autoextend.monitor.throttle import Throttles
from autoextend.monitor.vm import log
from autoextend.monitor.vmstate import VmState


class DriveVanished(AutoextendError):
    def __init__(self, vm: str, drive: str) -> None:
        self.vm = vm
        self.drive = drive
        super().__init__(f"{vm}: drive {drive} is gone")


def event_info(info: DriveInfo, threshold: int, excess: int) -> DriveInfo:
    """The drive's numbers as a threshold event gives them: the event's offset
    (threshold + excess) is the highest written offset when QEMU sent it."""
    return dataclasses.replace(info, allocation=max(info.allocation, threshold + excess),
                               threshold=0)


@dataclass
class _Times:
    """When each phase of one extension ended (seconds on the monitor's clock)."""

    event: float
    start: float
    decided: float = 0.0
    extended: float = 0.0


def sole(exc: Exception) -> Exception:
    """The one exception a task group wrapped (as often as it was wrapped), else ``exc``:
    a VM gone during an extension's throttle watch (a migration's source that exited) is
    the hypervisor's ``VmNotFound``, an expected failure, not an unexpected group (seen in
    the short chaos soak)."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


class Extensions:
    """Runs the extension task of one drive at a time (as many tasks as drives need)."""

    def __init__(self, ctx: MonitorContext, migrations: MigrationSteps,
                 throttles: Throttles) -> None:
        self._ctx = ctx
        self._migrations = migrations
        self._throttles = throttles

    async def run(self, vm: VmView, d: DriveState, known: DriveInfo | None = None) -> None:
        """Extend until the drive has its watermark of room (or is capped); one task owns it.
        ``known``: numbers fresh enough to decide on (a threshold event for the threshold we
        armed); None queries the hypervisor first.

        Any exception ends this extension only (counted as a failure, retried with backoff):
        never the VM's task, never the monitor.
        """
        bound = log.bind(vm=vm.name, drive=d.name, volume=str(d.volume))
        base = d.info.physical  # the size when this event's extensions began (the bound)
        try:
            while await self._once(vm, d, bound, known, base):
                known = None
        except Exception as exc:  # noqa: BLE001 - contained per drive, see docstring
            self._crashed(vm, d, bound, exc)

    def _crashed(self, vm: VmView, d: DriveState, bound: Any, exc: Exception) -> None:
        exc = sole(exc)
        if d.in_flight:
            delay = self._ctx.retry_delay(d, OutcomeKind.FAILED)
            d.extend_failed(self._ctx.clock.now(), str(exc) or type(exc).__name__, delay)
        if isinstance(exc, DriveVanished):
            # A pivot, a snapshot or a job's end replaced the drive: what was asked for
            # this volume is done; the new top is judged on its own numbers.
            bound.info("drive replaced or gone during its extension", error=str(exc))
        elif isinstance(exc, AutoextendError):
            bound.warning("extension failed", error=str(exc), attempts=d.attempts)
        else:
            bound.error("extension failed on an unexpected error", error=repr(exc),
                        attempts=d.attempts, exc_info=True)
            with contextlib.suppress(Exception):  # observers must not raise; if one does
                self._ctx.observer.notify(VmCheckFailed(vm.name, repr(exc)))

    async def _fresh(self, vm: VmView, d: DriveState) -> DriveInfo:
        for info in await self._ctx.hypervisor.drives(vm.name):
            # The same name on another path is another volume (a pivot or a snapshot made
            # a new top): this extension must not go on with the new volume's numbers.
            if info.drive == d.name and info.path == d.info.path:
                d.update_info(info)
                return info
        raise DriveVanished(vm.name, d.name)

    def _space_held(self, vm: VmView, d: DriveState) -> str | None:
        """Why the VG's level holds this extension back (None: go ahead)."""
        gate = self._ctx.space_gate
        if gate is None:
            return None
        return gate(d.volume, d.enospc or vm.machine.state is VmState.PAUSED_ENOSPC)

    async def _once(
        self, vm: VmView, d: DriveState, bound: Any, known: DriveInfo | None = None,
        base: int = 0,
    ) -> bool:
        """One extension. Returns True when the drive needs another one right away.

        Phases (seconds, see ``observer.extend_finished``): ``wait`` (event received to this
        task), ``decision`` (fresh numbers, unless the event gave them, and the plan),
        the extender's (``extend``, ``refresh``; its size check is part of ``refresh``),
        ``rearm`` and ``total``.
        """
        ctx = self._ctx
        now = ctx.clock.now()
        t = _Times(event=d.exceeded_at if d.exceeded_at is not None else now, start=now)
        if known is None:
            info = await self._fresh(vm, d)
        else:
            info = known
            d.update_info(info)
        info = effective(vm.machine, info)
        pol = ctx.policy_for(info, d.volume)
        t.decided = ctx.clock.now()
        decision = plan.plan(info, d, pol, plan.Gates(
            job_need=ctx.job_need(info, pol), dry_run=ctx.dry_run,
            space=lambda: self._space_held(vm, d)))
        if not isinstance(decision, plan.Extend):
            await self._not_extending(vm, d, bound, info, decision)
            return False
        bound.info("extending", physical=info.physical, size=decision.target,
                   allocation=info.allocation, wait_s=round(t.start - t.event, 6))
        async with self._throttles.watching(vm, d, info, pol, t.event):
            outcome = await self._call(vm, d, decision.target)
        t.extended = ctx.clock.now()
        if not outcome.ok:
            self._failed(vm, d, bound, decision.target, outcome, t)
            return False
        if not outcome.refreshed:
            await self._deferred(vm, d, bound, decision.target, outcome, t)
            return False
        return await self._grown(vm, d, bound, info, pol, outcome, t, base)

    async def _not_extending(self, vm: VmView, d: DriveState, bound: Any, info: DriveInfo,
                             decision: plan.Disable | plan.NotNeeded | plan.Hold) -> None:
        """Carry out a plan that extends nothing."""
        ctx = self._ctx
        match decision:
            case plan.Disable():
                ctx.disable(vm.name, d)
                ctx.observer.notify(
                    ExtendFinished(vm.name, d.name, d.volume, None, info.physical))
                await self._throttles.lift(vm, d, info)  # nothing will land: no limit
            case plan.NotNeeded(threshold=new_threshold):
                # A stale event (the drive grew since), or someone else extended it already.
                d.not_needed(new_threshold)
                bound.info("extension not needed", allocation=info.allocation,
                           physical=info.physical)
                try:
                    await ctx.hypervisor.set_threshold(vm.name, info, new_threshold)
                except AutoextendError:
                    d.disarmed()
                    raise
                finally:
                    await self._throttles.lift(vm, d, info)  # the room is there
            case plan.Hold(dry_run=True, target=target):
                bound.info("dry-run: would extend", physical=info.physical, size=target)
                d.extend_failed(ctx.clock.now(), "dry-run", ctx.settings.retry_max_s)
            case plan.Hold(reason=held):
                delay = ctx.retry_delay(d, OutcomeKind.FAILED)
                d.extend_failed(ctx.clock.now(), held, delay)
                bound.warning("extension held back", reason=held, retry_in_s=round(delay, 3))

    async def _call(self, vm: VmView, d: DriveState, target: int) -> ExtendOutcome:
        """The extender's answer within the deadline (a timeout is a failed outcome)."""
        deadline = self._ctx.extend_deadline_s
        extender = self._ctx.extender
        outcome: ExtendOutcome | None = None
        with anyio.move_on_after(deadline):
            if await self._migrations.may_refresh(vm):
                # asked again right before the refresh: a request through the SPM can
                # outlast the start of a migration out (monitor/migration.py)
                outcome = await extender.extend(
                    d.volume, target, may_refresh=partial(self._migrations.may_refresh, vm))
            else:  # migrating out: grow the volume, leave this host's view (migration.py)
                outcome = await extender.extend(d.volume, target, refresh=False)
        if outcome is None:
            outcome = ExtendOutcome(OutcomeKind.FAILED, 0, f"no answer within {deadline} s",
                                    code=OutcomeCode.TIMEOUT)
        return outcome

    def _failed(self, vm: VmView, d: DriveState, bound: Any, target: int,
                outcome: ExtendOutcome, t: _Times) -> None:
        ctx = self._ctx
        delay = ctx.retry_delay(d, outcome.kind)
        d.extend_failed(ctx.clock.now(), outcome.reason, delay)
        ctx.observer.notify(ExtendFinished(vm.name, d.name, d.volume, outcome.kind,
                                           outcome.size, {"extender": t.extended - t.decided}))
        if outcome.code is OutcomeCode.VG_FULL:
            ctx.observer.notify(VgFull(vm.name, d.name, d.volume))
            bound.error("volume group cannot satisfy the extension", size=target,
                        reason=outcome.reason, retry_in_s=round(delay, 3))
        else:
            bound.warning("extension failed", result=outcome.kind.value,
                          reason=outcome.reason, code=outcome.code.value, attempts=d.attempts,
                          retry_in_s=round(delay, 3))

    async def _deferred(self, vm: VmView, d: DriveState, bound: Any, target: int,
                  outcome: ExtendOutcome, t: _Times) -> None:
        """Extended in metadata only (migrating out): remember the size, arm nothing."""
        sizes = vm.machine.deferred_sizes
        sizes[d.name] = max(sizes.get(d.name, 0), outcome.size, target)
        d.extend_done(0)  # nothing to arm: this host's view did not grow
        await self._throttles.lift(vm, d, d.info)
        self._ctx.observer.notify(ExtendFinished(
            vm.name, d.name, d.volume, OutcomeKind.OK, outcome.size,
            {**outcome.phases, "extender": t.extended - t.start}))
        bound.info("extended; refresh deferred until the migration ends",
                   size=outcome.size, seen=d.info.physical,
                   duration_s=t.extended - t.start)

    async def _grown(self, vm: VmView, d: DriveState, bound: Any, info: DriveInfo,
                     pol: policy.DrivePolicy, outcome: ExtendOutcome, t: _Times,
                     base: int = 0) -> bool:
        """The volume grew on this host: re-arm, report. True when it needs more at once."""
        ctx = self._ctx
        # The extender checked the size this host sees (its contract): that is the new
        # physical size. No second query: the allocation moves on anyway, and a write past
        # the new threshold fires it (the safety-net poll catches the rest).
        self._throttles.landed(vm, d, info, pol)
        info = dataclasses.replace(info, physical=max(info.physical, outcome.size))
        d.update_info(info)
        if ctx.policy_for.sample_after_extend:
            # Write-rate chunks: a fresh look now measures the rate over this extension,
            # so the threshold re-armed below already covers a burst.
            info = await self._fresh(vm, d)
            pol = ctx.policy_for(info, d.volume)
        new_threshold = await self._rearm(vm, d, bound, info, pol)
        t_armed = ctx.clock.now()
        phases = {
            **outcome.phases,
            "wait": t.start - t.event,
            "decision": t.decided - t.start,
            "extender": t.extended - t.decided,
            "rearm": t_armed - t.extended,
            "total": t_armed - t.event,
        }
        ctx.observer.notify(
            ExtendFinished(vm.name, d.name, d.volume, OutcomeKind.OK, info.physical, phases))
        m = vm.machine
        if d.name in m.backing_full or d.name in m.room_drives:
            # An extension of this drive landed: its pauses were the volume's, not a full
            # storage's (a stale ENOSPC classified "with room" before it). No backoff holds
            # the next resume (monitor/backing.py).
            m.backing_full.discard(d.name)
            m.room_drives.discard(d.name)
            m.resume_attempts = 0
            m.last_resume_at = None
        bound.info("extended", size=info.physical, threshold=new_threshold,
                   duration_s=phases["total"],
                   phases={k: round(v, 6) for k, v in phases.items()})
        if d.state is ThresholdState.SET and policy.needs_extension(
            info.allocation, info.physical, pol
        ):
            d.mark_exceeded(ctx.clock.now())
            d.start_extend()
            return await self._may_go_on(vm, d, bound, info, pol, base)
        return False

    async def _may_go_on(self, vm: VmView, d: DriveState, bound: Any, info: DriveInfo,
                         pol: policy.DrivePolicy, base: int) -> bool:
        """Another extension for the same event: within ``max_chunks_per_event`` chunks, or
        when two fresh samples agree (``plan.agree``). Otherwise the drive waits for its
        retry time (a new event then grows it by the bound again, at most)."""
        ctx = self._ctx
        k = ctx.settings.max_chunks_per_event
        if plan.within_bound(base, info.physical, pol, k):
            return True
        first = await self._fresh(vm, d)
        second = await self._fresh(vm, d)
        if plan.agree(first, second, pol):
            return True
        delay = ctx.retry_delay(d, OutcomeKind.FAILED)
        reason = (f"grown by {k} chunk(s) for one event; the allocation "
                  f"({second.allocation}) is not confirmed by two samples")
        d.extend_failed(ctx.clock.now(), reason, delay)
        bound.warning("extension bounded", reason=reason, physical=info.physical,
                      allocation=second.allocation, retry_in_s=round(delay, 3))
        return False

    async def _rearm(self, vm: VmView, d: DriveState, bound: Any, info: DriveInfo,
                     pol: policy.DrivePolicy) -> int:
        """Arm the threshold on the grown drive (or disable it at its cap); the threshold."""
        if policy.at_cap(info.physical, info.capacity, pol):
            d.extend_done(0)
            self._ctx.disable(vm.name, d)
            await self._throttles.lift(vm, d, info)
            return 0
        new_threshold = policy.threshold(info.physical, pol)
        d.extend_done(new_threshold)
        try:
            await self._ctx.hypervisor.set_threshold(vm.name, info, new_threshold)
        except AutoextendError as exc:
            # The extension itself succeeded: do not extend again, just arm later.
            d.disarmed()
            bound.warning("re-arming failed; the next poll arms it", error=str(exc))
        else:  # what the hypervisor holds now (plan.look arms a drive whose info says 0)
            d.update_info(dataclasses.replace(d.info, threshold=new_threshold))
        await self._throttles.lift(vm, d, info)  # the same step: the room is there now
        return new_threshold
