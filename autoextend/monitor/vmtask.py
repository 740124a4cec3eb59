"""One VM's task: the only owner of the VM's pause machine, its drives and its inbox.

The monitor (``monitor/core.py``) starts one :class:`VmTask` per VM and routes the VM's
events to its inbox. The task handles one message at a time, and every look at the VM goes
through its one resync path (:meth:`VmTask.resync`): fresh drives, fresh run state (with the
drives in error, managed or not), the migration's step, one event for the VM's
:class:`~.vmstate.VmMachine`, then each drive's own decision (``plan.look``), a job's
step, then the pause's (resume or kill). Its task group holds at most one extension task per
drive and at most one live timer.

The collaborators it hands itself to (as a :class:`~.context.VmView`) do one thing each:
:class:`~.migrating.MigrationSteps` (a live migration's views), :class:`~.extension.
Extensions` (one drive's extension), :class:`~.jobs.JobSteps` (block jobs),
:class:`~.resume.ResumeSteps` (resume and kill) and :class:`~.views.ViewSteps` (the view
check at the VM's appearance, and the audit's findings).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup

from autoextend.checks import ALL_ON, Checks
from autoextend.errors import AutoextendError
from autoextend.monitor import backing, migration, plan, policy
from autoextend.monitor.context import MonitorContext
from autoextend.monitor.drive import DriveState, ThresholdState
from autoextend.monitor.extension import Extensions, event_info
from autoextend.monitor.handoff import HandoffSteps
from autoextend.monitor.jobs import JobSteps
from autoextend.monitor.migrating import MigrationSteps, effective, frozen
from autoextend.monitor.observer import BackingStoreFull, VmCheckFailed
from autoextend.monitor.protocols import (
    DriveInfo,
    DrivesChanged,
    EnospcPause,
    JobEnded,
    MigrationChanged,
    PauseReason,
    RunState,
    ThresholdCrossed,
    VmPaused,
    VmResumed,
)
from autoextend.monitor.resume import ResumeSteps
from autoextend.monitor.resync import merge_drives, observe
from autoextend.monitor.throttle import Throttles
from autoextend.monitor.views import ViewSteps
from autoextend.monitor.vm import (
    POLL,
    VM_INBOX_SIZE,
    Extended,
    Poll,
    ResyncRequest,
    ViewSuspect,
    VmMessage,
    log,
)
from autoextend.monitor.vmstate import ResumePolicy, VmMachine, VmState

#: After an ENOSPC on a drive with room, the pause message that follows it (QMP's STOP,
#: libvirt's suspend) resumes the VM; if none came within this long, a look.
PAUSE_FOLLOWS_S = 1.0

@dataclass(frozen=True)
class Steps:
    """The collaborators every VM's task uses (one each per monitor)."""

    migrations: MigrationSteps
    extensions: Extensions
    jobs: JobSteps
    resumes: ResumeSteps
    views: ViewSteps
    throttles: Throttles
    handoffs: HandoffSteps

    @classmethod
    def of(cls, ctx: MonitorContext, throttles: Throttles, checks: Checks = ALL_ON) -> Steps:
        migrations = MigrationSteps(ctx, checks)
        return cls(migrations, Extensions(ctx, migrations, throttles), JobSteps(ctx),
                   ResumeSteps(ctx), ViewSteps(ctx, checks), throttles, HandoffSteps(ctx))


class VmTask:
    """One VM: its inbox, its drives (each its own state machine) and its pause machine."""

    def __init__(self, name: str, ctx: MonitorContext, steps: Steps) -> None:
        self.name = name
        self._ctx = ctx
        self._steps = steps
        self.inbox, self.receive = anyio.create_memory_object_stream[VmMessage](VM_INBOX_SIZE)
        self.machine = VmMachine()
        self.drives: dict[str, DriveState] = {}
        self.scope = anyio.CancelScope()
        self.resync_pending = False
        self.failures = 0            # handling failed this many times in a row
        self.retry_at = 0.0          # after a failure: not before this time
        self.timer_at: float | None = None  # a wake-up is scheduled for this time
        self.pause_messages = 0  # VmPaused messages handled (the ENOSPC's safety check)
        self.checks_at: set[float] = set()  # when those checks are due (Monitor.idle)
        self._tg: TaskGroup | None = None
        # The drive each running extension task was started for, by drive name.
        self._extending: dict[str, DriveState] = {}
        self.apply_resume_settings()

    # ----------------------------------------------------------------- the task

    async def run(self) -> None:
        """Handle the inbox until the monitor drops the VM (cancels ``scope``)."""
        with self.scope:
            async with anyio.create_task_group() as tg, self.receive:
                self._tg = tg
                async for message in self.receive:
                    if self.failures and self._ctx.clock.now() < self.retry_at:
                        self.resync_pending = True  # backing off after a failure
                        await self._absorb(message)
                        continue
                    await self._handle_safely(message)

    def post(self, message: VmMessage) -> None:
        """Queue without blocking; a full inbox degrades to one pending resync."""
        try:
            self.inbox.send_nowait(message)
        except anyio.WouldBlock:
            self.resync_pending = True
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    def close(self) -> dict[str, DriveState]:
        """Stop the task (its extensions and timer with it); the drives it had."""
        self.scope.cancel()
        self.inbox.close()
        drives, self.drives = self.drives, {}
        return drives

    def apply_resume_settings(self) -> None:
        name, kill_after = self._ctx.resume.for_vm(self.name)
        self.machine.policy = ResumePolicy(name)
        self.machine.kill_after_s = kill_after

    def in_flight(self) -> int:
        """Extensions running for drives the VM still has (derived, never counted by hand:
        an extension whose drive was replaced, removed or dropped no longer counts)."""
        return sum(1 for name, d in self._extending.items() if self.drives.get(name) is d)

    def wake_at(self, when: float) -> None:
        """Make the VM's task look again at ``when`` (one timer per VM, the earliest wins)."""
        if self._tg is None or (self.timer_at is not None and self.timer_at <= when):
            return
        self.timer_at = when

        async def timer() -> None:
            await self._ctx.clock.sleep(max(0.0, when - self._ctx.clock.now()))
            if self.timer_at == when:
                self.timer_at = None
                self.post(POLL)

        self._tg.start_soon(timer, name=f"timer:{self.name}")

    def start_extension(self, d: DriveState, info: DriveInfo | None = None) -> None:
        """Start the drive's extension task. ``info``: numbers fresh enough to decide on
        (a threshold event for the threshold we armed); None queries the hypervisor first."""
        if d.state is not ThresholdState.EXCEEDED or self._tg is None:
            return
        d.start_extend()
        self._extending[d.name] = d
        self._ctx.in_flight_changed()
        self._tg.start_soon(self._extension, d, info, name=f"extend:{self.name}:{d.name}")

    async def _extension(self, d: DriveState, info: DriveInfo | None) -> None:
        try:
            await self._steps.extensions.run(self, d, info)
        finally:
            if self._extending.get(d.name) is d:
                del self._extending[d.name]
            self._ctx.in_flight_changed()
        if self.drives.get(d.name) is d:
            # Done (grown, deferred, not needed, capped): the VM's task goes on from what
            # it knows (after_extension). Failed or crashed (a drive replaced under it,
            # say): a full look. The old path (fast_resume off) always looked.
            done = d.state is not ThresholdState.EXCEEDED and self._ctx.fast_resume
            self.post(Extended(d.name) if done else POLL)

    # ----------------------------------------------------------------- messages

    async def _handle_safely(self, message: VmMessage) -> None:
        """Handle one message; any exception ends this attempt only, retried with backoff."""
        try:
            await self._handle(message)
            if self.resync_pending:
                self.resync_pending = False
                await self.resync(rearm=True)
        except Exception as exc:  # noqa: BLE001 - one VM's failure must not stop the others
            self._failed(exc)
        else:
            if self.failures:
                self.failures = 0
                log.info("vm check recovered", vm=self.name)

    def _failed(self, exc: Exception) -> None:
        """Count, log and schedule the retry of a failed VM check. Never raises."""
        try:
            self.failures += 1
            settings = self._ctx.settings
            delay = policy.backoff(self.failures, settings.retry_initial_s,
                                   settings.retry_max_s)
            self.retry_at = self._ctx.clock.now() + delay
            self.resync_pending = True
            self.wake_at(self.retry_at)
            # Once per outage at warning level, then quietly until it recovers
            # (e.g. libvirtd down: every poll of every VM would fail).
            if isinstance(exc, AutoextendError):
                report = log.debug if self.failures > 1 else log.warning
                report("vm check failed", vm=self.name, error=str(exc),
                       retry_in_s=round(delay, 3))
            else:
                log.error("vm check failed on an unexpected error", vm=self.name,
                          error=repr(exc), retry_in_s=round(delay, 3),
                          exc_info=self.failures == 1)
            self._ctx.observer.notify(VmCheckFailed(self.name, str(exc) or type(exc).__name__))
        except Exception as again:  # noqa: BLE001 - e.g. an observer that raises
            log.error("vm failure handling failed", vm=self.name, error=repr(again))
            self.resync_pending = True

    async def _handle(self, message: VmMessage) -> None:
        if isinstance(message, VmPaused):
            self.pause_messages += 1
        match message:
            case ResyncRequest() | DrivesChanged():
                await self.resync(rearm=True)
            case Poll():
                await self.resync(rearm=False)
            case ThresholdCrossed():
                await self._crossed(message)
            case Extended(drive=name):
                d = self.drives.get(name)
                if d is not None and d.info.job:
                    # A job's target: whether its job paused for space is in no event
                    # the extension saw, so look (jobs are rare and off the resume path).
                    await self.resync(rearm=False)
                else:
                    await self.after_extension()
            case VmResumed():
                ours = self.machine.cont_unconfirmed
                self.machine.cont_unconfirmed = False
                if ours and self._ctx.fast_resume:
                    await self._resumed()
                else:  # someone else resumed it: a look
                    await self.resync(rearm=False)
            case EnospcPause() | VmPaused() if self.machine.cont_unconfirmed:
                # From before our cont (its RESUME comes after it): never taken as a new
                # pause on the size just resumed on (that would be "backing store full").
                await self.resync(rearm=False)
            case EnospcPause(drive=name) if name in self.drives:
                self.machine.enospc_events.add(name)
                d = self.drives[name]
                if d.state is not ThresholdState.SET:
                    self.flag_enospc(d, self._ctx.clock.now())
                elif self._first_on_this_size(d):
                    # Armed and not crossed: the failed write crossed no threshold armed on
                    # this size, so it has room now (monitor/backing.py). The pause message
                    # that follows resumes it, with no look; if none comes, a look soon.
                    self._expect_pause()
                else:
                    # Again on the size resumed on: backing store full, perhaps. Fresh
                    # numbers and the run state decide, never the event alone.
                    await self.resync(rearm=False)
            case JobEnded():
                self._steps.jobs.ended(self, message)
            case MigrationChanged():
                self.machine.migration_stale = True
                await self._steps.migrations.freeze_early(self)
                await self.resync(rearm=False)
            case ViewSuspect():
                await self._steps.views.confirm(self, message)
                await self.resync(rearm=False)
            case VmPaused(state=RunState() as state) if self._ctx.fast_resume:
                await self._paused(state)
            case EnospcPause() | VmPaused():
                # Which drives failed, and whether they are ours, comes from a fresh look.
                await self.resync(rearm=False)
            case _:
                pass

    async def _absorb(self, message: VmMessage) -> None:
        """While backing off after a failed look (the pending resync re-reads everything):
        keep what a message says that needs no look. A migration's news (the source's view
        freezes now, not after the hypervisor answers a look again), a crossing or an ENOSPC
        on a known drive (its extension starts now). Never raises."""
        try:
            match message:
                case MigrationChanged():
                    self.machine.migration_stale = True
                    await self._steps.migrations.freeze_early(self)
                case ThresholdCrossed(drive=name) if name in self.drives:
                    await self._crossed(message)
                case VmResumed():
                    self.machine.cont_unconfirmed = False
                case EnospcPause(drive=name) if (name in self.drives
                                                 and not self.machine.cont_unconfirmed):
                    self.flag_enospc(self.drives[name], self._ctx.clock.now())
                case _:
                    pass
        except AutoextendError as err:
            log.debug("message kept for the next look", vm=self.name, error=str(err))

    async def _crossed(self, event: ThresholdCrossed) -> None:
        d = self.drives.get(event.drive)
        if d is None:
            await self.resync(rearm=True)
            return
        thr = event.threshold
        armed = d.ours(thr)
        if d.mark_exceeded(self._ctx.clock.now()):
            log.info("threshold crossed", vm=self.name, drive=d.name, threshold=thr,
                     excess=event.excess)
            # The event names the threshold we armed on the size we know: the decision
            # needs no fresh query (the allocation is in the event).
            self.start_extension(d, event_info(d.info, thr, event.excess) if armed else None)

    # ----------------------------------------------------------------- the resync path

    async def resync(self, *, rearm: bool) -> None:
        """Re-read the VM and act. ``rearm``: the hypervisor may have lost our thresholds
        (connect, hot-plug, dropped event), so arm every drive again."""
        ctx, steps = self._ctx, self._steps
        # Migrating out: the drives as last read. The hypervisor's stats can wait behind the
        # migration for its whole length (libvirt's job), and nothing is refreshed or
        # resumed here until it ends; the crossings and ENOSPCs still come as events, and
        # the check below reads the drives again when the migration ends.
        if self.machine.migration is not migration.MigState.MIGRATING_OUT or not self.drives:
            infos = await ctx.hypervisor.drives(self.name)
            await ctx.caps.ensure(infos)  # a new (capacity, cluster size): measured once
            merge_drives(ctx, self, infos, rearm=rearm)
        state = await ctx.hypervisor.run_state(self.name)
        moved = await steps.migrations.check(self, state)
        if moved.stopped:
            return  # arrived on a drive length QEMU took from a stale view: it goes away
        # A VM that appeared here without an incoming migration: its views are checked
        # against the metadata before anything is armed (monitor/views.py).
        if await steps.views.on_appear(self, state):
            return  # stopped before it ran (a stale view): it goes away
        if moved.refreshed or moved.rearm:  # views grew: fresh numbers, arm again
            merge_drives(ctx, self, await ctx.hypervisor.drives(self.name), rearm=True)
        adopted = self.machine.arrival is not None and self.machine.arrival.resumable
        state = await steps.handoffs.check(self, state, arrived=moved.arrived)
        if not adopted and self.machine.arrival is not None and self.machine.arrival.resumable:
            # An arrived pause adopted now: its volumes were refreshed, read them again.
            merge_drives(ctx, self, await ctx.hypervisor.drives(self.name), rearm=True)
        observe(ctx, self, state)
        if self.machine.state in (VmState.PAUSED_ENOSPC, VmState.PAUSED_ENOSPC_UNMANAGED) or any(
            e.nospace and e.drive in self.drives for e in state.errors
        ):
            self._flag_enospc_drives(state)
        for d in list(self.drives.values()):
            await self._evaluate(d)
            await steps.jobs.step(self, d)
        await steps.resumes.after_check(self)

    async def after_extension(self) -> None:
        """What follows an extension, from what this task knows, with no fresh look (no
        drive read, no run-state read): each drive's ``plan.look`` (arm one whose re-arm
        failed, wait for a retry), a job paused for space, then the pause's step (``cont``
        an ENOSPC pause whose drives all have room now).

        Why nothing needs reading again: the extender checked the size this host sees (its
        contract), and the extension task re-armed on it; the pause state is the machine's,
        which every STOP and RESUME keeps current (each is a look of its own, handled in
        order in this inbox, so a pause or resume seen before this message is already in
        the machine); a migration is known from events, and the extension itself did not
        refresh a view while one may run (``migrating.MigrationSteps.may_refresh``). A
        ``cont`` that crosses a resume by someone else is harmless: QEMU ignores it.
        """
        for d in list(self.drives.values()):
            await self._evaluate(d)
            await self._steps.jobs.step(self, d)
        await self._steps.resumes.after_check(self)
        await self._steps.throttles.after_resume(self)  # lifts put off until the cont

    async def _resumed(self) -> None:
        """The RESUME our ``cont`` caused: the VM runs (a pause since comes after it in the
        same stream, and is handled next), so the machine takes that in with no look. The
        look used to read everything here, and under a fast guest it ran into the next
        pause's resume window."""
        observe(self._ctx, self, RunState(True))
        for d in list(self.drives.values()):
            await self._evaluate(d)
        await self._steps.throttles.after_resume(self)

    def _expect_pause(self) -> None:
        """A look in :data:`PAUSE_FOLLOWS_S` unless a pause message is handled first (a
        wake-up regardless would land a look in the next pause's resume window)."""
        if self._tg is None:
            return
        seen = self.pause_messages
        when = self._ctx.clock.now() + PAUSE_FOLLOWS_S
        self.checks_at.add(when)

        async def check() -> None:
            await self._ctx.clock.sleep(PAUSE_FOLLOWS_S)
            if self.pause_messages == seen:
                self.post(POLL)
            self.checks_at.discard(when)

        self._tg.start_soon(check, name=f"pause-follows:{self.name}")

    def _named_enospc(self, state: RunState) -> set[str]:
        """The drives an ENOSPC names: in the run state, or in an event since the VM ran."""
        return {e.drive for e in state.errors if e.nospace} | self.machine.enospc_events

    def _first_on_this_size(self, d: DriveState) -> bool:
        """No resume of ours since this drive's threshold was armed on its size: an ENOSPC
        on it now is one from before (``monitor/backing.py``), never backing store full."""
        return self.machine.resumed_on.get(d.name) != (d.info.physical, d.threshold)

    async def _paused(self, state: RunState) -> None:
        """A pause with the run state the backend read for it: the resync's steps on that
        state, without reading the drives or the run state again (both are on the resume's
        critical path). Anything a plain pause does not cover takes the full resync: a VM
        not yet looked at, a migration known or in doubt, a pause for a migration."""
        m = self.machine
        named = self._named_enospc(state)
        again = any(d.state is ThresholdState.SET and not self._first_on_this_size(d)
                    for name, d in self.drives.items() if name in named)
        if (not m.views_checked or not self.drives or m.migration_stale
                or m.migration is not migration.MigState.NONE or m.arrival is not None
                or state.pause_reason is PauseReason.MIGRATION or state.running
                or again):  # backing store full, perhaps: only fresh numbers may say so
            await self.resync(rearm=False)
            return
        observe(self._ctx, self, state)
        if self.machine.state in (VmState.PAUSED_ENOSPC, VmState.PAUSED_ENOSPC_UNMANAGED) or any(
            e.nospace and e.drive in self.drives for e in state.errors
        ):
            self._flag_enospc_drives(state)
        for d in list(self.drives.values()):
            await self._evaluate(d)
            await self._steps.jobs.step(self, d)
        await self._steps.resumes.after_check(self)

    def _flag_enospc_drives(self, state: RunState) -> None:
        """A VM paused for ENOSPC: flag the managed drives the hypervisor names, and those
        inside their watermark (the ENOSPC event may have been missed, and the highest
        written offset does not always reach the device size at an ENOSPC)."""
        named = self._named_enospc(state)
        now = self._ctx.clock.now()
        for d in self.drives.values():
            if d.enospc or d.in_flight:
                continue
            pol = self._ctx.policy_for(d.info, d.volume)
            info = effective(self.machine, d.info)  # frozen view: the size it was extended to
            if d.name in named and self._with_room(d, info, pol):
                continue  # never extended for this pause (monitor/backing.py)
            # The hypervisor keeps naming a drive until the VM runs again: act on that once.
            named_now = d.name in named and d.name not in self.machine.full_drives
            if named_now or policy.needs_extension(info.allocation, info.physical, pol):
                self.flag_enospc(d, now)

    def _with_room(self, d: DriveState, info: DriveInfo, pol: policy.DrivePolicy) -> bool:
        """An ENOSPC named on ``d``: True when the drive has room (``backing.classify``),
        which makes the pause autoextend's to resume, never by an extension."""
        m = self.machine
        armed = d.threshold if d.state is ThresholdState.SET else 0
        kind = backing.classify(backing.EnospcSample(
            armed=armed, seen=info.threshold, allocation=info.allocation,
            physical=info.physical, watermark=policy.watermark(pol),
            resumed_on=m.resumed_on.get(d.name)))
        if kind is backing.EnospcKind.VOLUME_FULL:
            m.room_drives.discard(d.name)
            m.backing_full.discard(d.name)
            return False
        m.managed_drive_full(d.name)  # autoextend's pause to end: by a resume
        bound = log.bind(vm=self.name, drive=d.name, volume=str(d.volume), vg=d.volume.vg,
                         allocation=info.allocation, physical=info.physical)
        if d.name not in m.room_drives:
            m.room_drives.add(d.name)
            bound.info("enospc on a drive with room: not extending it; resuming under the "
                       "[resume] backoff (a stale event, or the storage under it is full)")
        if kind is backing.EnospcKind.BACKING_STORE_FULL and d.name not in m.backing_full:
            m.backing_full.add(d.name)
            bound.warning("backing store full: the storage under the VG refused a write "
                          "inside the drive's volume (ENOSPC with room); never extending "
                          "for it, resuming under the [resume] backoff")
            self._ctx.observer.notify(BackingStoreFull(self.name, d.name, d.volume))
        return True

    def flag_enospc(self, d: DriveState, now: float) -> None:
        self.machine.managed_drive_full(d.name)
        if d.state is ThresholdState.DISABLED:
            if not d.enospc:
                log.warning("enospc on a drive at its cap", vm=self.name, drive=d.name,
                            volume=str(d.volume))
            d.mark_enospc_at_cap()
            return
        news = d.mark_exceeded(now, enospc=True)
        log.info("enospc", vm=self.name, drive=d.name, new=news)
        if d.state is ThresholdState.EXCEEDED:
            self.start_extension(d)

    async def _evaluate(self, d: DriveState) -> None:
        """Carry out what a drive needs now (``plan.look``). Never blocks on an extension."""
        if d.in_flight or d.name not in self.drives:
            return
        if not migration.may_arm(self.machine.migration):
            return  # incoming (the guest runs elsewhere yet) or departed
        ctx = self._ctx
        info = effective(self.machine, d.info)
        pol = ctx.policy_for(info, d.volume)
        now = ctx.clock.now()
        gates = plan.LookGates(now, frozen=frozen(self.machine, d.name),
                               job_need=ctx.job_need(info, pol))
        match plan.look(info, d, pol, gates):
            case plan.Idle(warn=warn, reenable=reenable):
                if warn:
                    log.warning(warn, vm=self.name, drive=d.name)
                if reenable:
                    d.disarmed()
            case plan.Wait(at=at):
                self.wake_at(at)
            case plan.Extend():
                if d.mark_exceeded(now):
                    log.info("drive needs extension (poll)", vm=self.name, drive=d.name,
                             allocation=info.allocation, physical=info.physical)
                self.start_extension(d)
            case plan.Disable():
                ctx.disable(self.name, d)
            case plan.Arm(threshold=threshold, reenable=reenable):
                if reenable:
                    d.disarmed()
                await self._arm(d, threshold)

    async def _arm(self, d: DriveState, threshold: int) -> None:
        if self._ctx.dry_run:
            log.info("dry-run: would arm threshold", vm=self.name, drive=d.name,
                     threshold=threshold)
        else:
            await self._ctx.hypervisor.set_threshold(self.name, d.info, threshold)
            d.update_info(dataclasses.replace(d.info, threshold=threshold))
        d.armed(threshold)
        log.debug("threshold armed", vm=self.name, drive=d.name, threshold=threshold,
                  physical=d.info.physical)

    # ----------------------------------------------------------------- status

    def _at_cap_text(self) -> str | None:
        """``enospc, at cap ...`` for a VM paused for space on a drive at its cap: where the
        image ends and what its bitmaps take, next to the cap (``monitor/policy.py``)."""
        if self.machine.state is not VmState.PAUSED_ENOSPC:
            return None
        for d in self.drives.values():
            if d.state is ThresholdState.DISABLED and d.enospc:
                i = d.info
                bitmaps = policy.bitmap_bytes(i.capacity, i.cluster_size, i.bitmaps) \
                    if i.cluster_size > 0 else 0
                return (f"enospc, at cap: {d.name} image end {i.allocation} B, "
                        f"bitmaps {bitmaps} B, cap {d.cap} B")
        return None

    def snapshot(self) -> dict[str, Any]:
        """What ``autoextend status`` shows of this VM and its drives."""
        m = self.machine
        return {
            "vm": self.name,
            "paused": self._at_cap_text() or m.describe(),
            "state": m.state.value,
            "resume_policy": m.policy.value,
            "resume_attempts": m.resume_attempts,
            "last_action": m.last_action,
            "migration": m.migration.value,
            "stale_views": dict(m.stale_views),
            "drives": [{**d.snapshot(), "throttle": self._steps.throttles.status(d.volume)}
                       for d in self.drives.values()],
        }
