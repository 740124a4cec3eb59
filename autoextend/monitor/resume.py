"""Resume and kill: what follows a look at a paused VM, once its drives are seen to.

:meth:`ResumeSteps.after_check` runs at the end of every resync of the VM, from the VM's own
task (the one owner of its :class:`~.vmstate.VmMachine`): an ENOSPC pause is resumed once
every managed drive that paused it has room (at most one resume per backoff step); an
I/O-error pause follows ``[resume] policy`` (probe the storage twice, resume, or kill after
``kill_after_s``). The pure rules are in ``vmstate.py``.
"""

from __future__ import annotations

from autoextend.errors import AutoextendError
from autoextend.monitor import migration
from autoextend.monitor.context import MonitorContext, VmView
from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.observer import IoErrorAction, Resumed, ResumeLatency
from autoextend.monitor.probe import probe_all
from autoextend.monitor.protocols import MigrationRunning, VmNotFound
from autoextend.monitor.vm import log
from autoextend.monitor.vmstate import Action, ResumePolicy, VmEvent, VmState

KILL_ATTEMPTS = 3


class ResumeSteps:
    """Ends the pauses autoextend may end (resume), or kills, for one VM at a time."""

    def __init__(self, ctx: MonitorContext) -> None:
        self._ctx = ctx

    async def after_check(self, vm: VmView) -> None:
        m = vm.machine
        if m.stale_views:
            # Paused by autoextend for a stale view (monitor/views.py): never resumed here.
            held = "left paused: stale view (" + ", ".join(sorted(m.stale_views)) + ")"
            if m.paused and m.last_action != held:
                m.record(held)
            return
        # An extension deferred its refresh (deferred_sizes): a migration out runs, even
        # if this task has not stepped the machine yet (its look may wait on the
        # hypervisor). The view did not grow: never resume here then.
        if m.paused and (not migration.may_resume(m.migration) or m.deferred_sizes):
            state = migration.MigState.MIGRATING_OUT if m.deferred_sizes else m.migration
            held = f"left paused: {state.value} (resumed where it runs next)"
            if m.last_action != held:
                m.record(held)
                log.info("vm paused during a migration: not resuming it here", vm=vm.name,
                         migration=state.value)
            return
        if m.state is VmState.PAUSED_ENOSPC:
            if any(d.enospc or d.in_flight for d in vm.drives.values()):
                return
            if not m.ours:
                # Paused for ENOSPC, but on no drive autoextend knows to be full, and the
                # hypervisor named none: not autoextend's pause to end (no resume storm).
                if m.last_action != "left paused: enospc on no managed drive":
                    m.record("left paused: enospc on no managed drive")
                    log.warning("vm paused for lack of space, but no drive autoextend manages "
                                "is full; leaving it paused", vm=vm.name)
                return
            s = self._ctx.resume
            due = m.resume_due_at(s.backoff_initial_s, s.backoff_max_s)
            # Sent already and RESUME not seen yet; or a full backing store, which pauses
            # again at once: one resume per backoff step.
            if (m.expect_resume or m.backing_full) and self._ctx.clock.now() < due:
                vm.wake_at(due)
                return
            await self._act(vm, VmEvent.ROOM, "enospc")
        elif m.state is VmState.PAUSED_IO_ERROR:
            await self._io_error_step(vm)

    async def _io_error_step(self, vm: VmView) -> None:
        m = vm.machine
        s = self._ctx.resume
        now = self._ctx.clock.now()
        if m.policy is ResumePolicy.LEAVE or m.killed:
            return  # leave it; or killed already (the VM is on its way out)
        if any(d.enospc or d.in_flight for d in vm.drives.values()):
            return  # a managed drive also ran out of space: extend first
        if m.policy is ResumePolicy.KILL and m.paused_at is not None:
            kill_at = m.paused_at + m.kill_after_s
            if now >= kill_at:
                await self._act(vm, VmEvent.KILL_DUE, "io-error",
                                detail=f"paused on I/O error for over {m.kill_after_s:g} s")
                return
            vm.wake_at(kill_at)
        if self._ctx.lease_ok is not None and not self._ctx.lease_ok():
            m.probe_result(False, now, s.backoff_initial_s)
            log.info("not resuming: this host's lease is not valid", vm=vm.name)
            vm.wake_at(now + s.backoff_initial_s)
            return
        due = m.resume_due_at(s.backoff_initial_s, s.backoff_max_s)
        paths = ([e.path for e in m.errors if not e.nospace] or [e.path for e in m.errors]
                 or [d.info.path for d in vm.drives.values()])
        ok = await probe_all(self._ctx.probe, paths)
        now = self._ctx.clock.now()
        if not m.probe_result(ok, now, s.backoff_initial_s):
            if not ok:
                log.info("storage probe failed; vm stays paused", vm=vm.name, paths=paths)
            vm.wake_at(max(due, now + s.backoff_initial_s))
            return
        if self._ctx.clock.now() < due:
            vm.wake_at(due)
            return
        await self._act(vm, VmEvent.STORAGE_OK, "io-error",
                        detail="storage probe ok twice in a row")

    async def _act(self, vm: VmView, event: VmEvent, cause: str, detail: str = "") -> None:
        """Apply a check event; send the resume or kill it asks for."""
        ctx = self._ctx
        m = vm.machine
        paused_at = m.paused_at
        backoff = (m.resume_attempts, m.last_resume_at)
        actions = m.apply(event, ctx.clock.now())
        if Action.RESUME in actions:
            if ctx.dry_run:
                log.info("dry-run: would resume", vm=vm.name, cause=cause)
                return
            m.expect_resume = True
            m.resuming({d.name: (d.info.physical, d.threshold) for d in vm.drives.values()
                        if d.state is ThresholdState.SET})
            m.record(f"resumed after {cause}" + (f": {detail}" if detail else ""))
            try:
                await ctx.hypervisor.resume(vm.name)
            except MigrationRunning as err:
                self._refused(vm, err, backoff)
                return
            m.cont_unconfirmed = True
            if cause == "io-error":
                ctx.observer.notify(IoErrorAction(vm.name, "resume", detail))
            else:
                ctx.observer.notify(Resumed(vm.name, True))  # autoextend_resumes_total: ENOSPC
                if paused_at is not None:
                    ctx.observer.notify(ResumeLatency(vm.name, ctx.clock.now() - paused_at))
            log.info("vm resumed", vm=vm.name, cause=cause, reason=detail or None,
                     attempt=m.resume_attempts)
        elif Action.KILL in actions:
            if ctx.dry_run:
                log.info("dry-run: would kill", vm=vm.name, reason=detail)
                return
            log.warning("killing vm", vm=vm.name, reason=detail)
            m.record(f"killed: {detail}")
            # Counted once per pause, when decided: the kill below may be slow or fail while
            # QEMU is stuck on the failing storage (libvirt's destroy then errs, and the
            # domain goes away later), and it is retried, never counted twice.
            ctx.observer.notify(IoErrorAction(vm.name, "kill", detail))
            await self._kill(vm)

    def _refused(self, vm: VmView, err: MigrationRunning,
                 backoff: tuple[int, float | None]) -> None:
        """The backend refused the resume: a migration out of this host runs, which this
        task had not learnt of yet (events off or unread). Nothing was sent to the guest:
        undo the resume's bookkeeping, hold the VM as migrating out, and look again now
        (the look steps the migration's region; the guest is resumed where it runs next,
        or here if the migration fails)."""
        m = vm.machine
        m.expect_resume = False
        m.resume_attempts, m.last_resume_at = backoff
        m.migration_stale = True
        m.record(f"left paused: {migration.MigState.MIGRATING_OUT.value} (resumed where it "
                 "runs next)")
        log.warning("resume refused: the vm is migrating out of this host", vm=vm.name,
                    migration=err.status)
        vm.wake_at(self._ctx.clock.now())

    async def _kill(self, vm: VmView) -> None:
        """Kill the VM: up to :data:`KILL_ATTEMPTS` tries until it is gone (a VM already gone
        is killed). No pause between them: libvirt's destroy itself waits for a stuck QEMU
        (SIGTERM, then SIGKILL) before it gives up."""
        for attempt in range(1, KILL_ATTEMPTS + 1):
            try:
                await self._ctx.hypervisor.kill(vm.name)
                return
            except VmNotFound:
                return
            except AutoextendError as err:
                if attempt == KILL_ATTEMPTS:
                    raise
                log.warning("kill failed; trying again", vm=vm.name, error=str(err),
                            attempt=attempt)
