"""Block-job targets in the monitor: resume a job paused for lack of space once its target
has room, and report jobs that ended for lack of space.

A job's target (a commit base, a mirror target, a backup scratch node) reaches the monitor
as one more drive (``DriveInfo.job`` set), so it has its own :class:`DriveState`, its
threshold on its own protocol node and extensions through the same extender; the chunk is
larger while the job runs (``[policy] job_chunk_factor``, see ``overrides.resolve``), and a
commit base (or a push backup's target) measured at the job's start is grown to what the
job needs first
(``jobpolicy.need_size``). When the job ends (a pivot, a completion), the target is no
longer reported: its state is dropped, and a new top image under the drive's name is a new
drive (a different path), so nothing meant for one volume is applied to another.
"""

from __future__ import annotations

from autoextend.monitor import plan
from autoextend.monitor.context import MonitorContext, VmView
from autoextend.monitor.drive import DriveState, ThresholdState
from autoextend.monitor.observer import JobFailed, JobResumed
from autoextend.monitor.protocols import JobControl, JobEnded
from autoextend.monitor.vm import log


class JobSteps:
    """Resumes block jobs paused for space and reports jobs that ended, for every VM (the
    last resume of each job is kept here, by VM and job id)."""

    def __init__(self, ctx: MonitorContext) -> None:
        self._ctx = ctx
        self._resumed_at: dict[tuple[str, str], float] = {}  # (vm, job id) -> last resume

    async def step(self, vm: VmView, d: DriveState) -> None:
        """A job target whose job paused for lack of space: extend it, or resume the job."""
        info = d.info
        if not info.job or not info.job_paused or d.in_flight:
            return
        ctx = self._ctx
        pol = ctx.policy_for(info, d.volume)
        if plan.full(info, False, pol, ctx.job_need(info, pol)):
            if d.state is ThresholdState.DISABLED:
                return  # at its cap: the job stays paused, an operator must act
            if d.mark_exceeded(ctx.clock.now(), enospc=True):
                log.info("block job paused for lack of space", vm=vm.name, drive=d.name,
                         job=info.job, job_id=info.job_id, volume=str(d.volume))
            vm.start_extension(d)
            return
        control = ctx.hypervisor
        if not isinstance(control, JobControl):
            return
        key = (vm.name, info.job_id)
        now = ctx.clock.now()
        due = self._resumed_at.get(key, -1e18) + ctx.settings.retry_initial_s
        if now < due:
            vm.wake_at(due)
            return
        self._resumed_at[key] = now
        if ctx.dry_run:
            log.info("dry-run: would resume block job", vm=vm.name, job_id=info.job_id)
            return
        await control.resume_job(vm.name, info.job_id)
        ctx.observer.notify(JobResumed(vm.name, d.name, info.job, info.job_id))
        log.info("block job resumed", vm=vm.name, drive=d.name, job=info.job,
                 job_id=info.job_id, physical=info.physical)

    def ended(self, vm: VmView, event: JobEnded) -> None:
        self._resumed_at.pop((vm.name, event.job_id), None)
        if not event.error:
            log.info("block job finished", vm=vm.name, job=event.kind, job_id=event.job_id)
            return
        reason = "nospace" if event.nospace else "error"
        log.warning("block job failed", vm=vm.name, job=event.kind, job_id=event.job_id,
                    reason=reason, error=event.error)
        self._ctx.observer.notify(JobFailed(vm.name, event.job_id, event.kind, reason,
                                            event.error))
