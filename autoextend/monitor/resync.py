"""One resync path for connect, poll and events, and what follows from it: arm, extend,
resume or kill.

Every look at a VM goes through :meth:`Resync._resync`: fresh drives, fresh run state (with
the drives in error, managed or not), one event for the VM's :class:`VmMachine`, then each
drive's own decision, then the pause's. Only the VM's task calls it, so the VM's pause state
has one owner; the pure rules are in ``vmstate.py``.
"""

from __future__ import annotations

from autoextend.monitor import migration, policy
from autoextend.monitor.drive import DriveState, ThresholdState
from autoextend.monitor.jobs import JobSteps
from autoextend.monitor.observer import (
    DriveGone,
    DriveSeen,
    IoErrorAction,
    Paused,
    Resumed,
    UnmanagedEnospc,
)
from autoextend.monitor.probe import probe_all
from autoextend.monitor.protocols import DriveInfo, PauseReason, RunState
from autoextend.monitor.vm import Vm, log
from autoextend.monitor.vmstate import Action, ResumePolicy, VmEvent, VmState, classify


class Resync(JobSteps):
    async def _resync(self, vm: Vm, *, rearm: bool) -> None:
        """Re-read the VM and act. ``rearm``: the hypervisor may have lost our thresholds
        (connect, hot-plug, dropped event), so arm every drive again."""
        infos = await self.hypervisor.drives(vm.name)
        self._merge_drives(vm, infos, rearm=rearm)
        state = await self.hypervisor.run_state(vm.name)
        moved = await self._check_migration(vm, state)
        if moved.refreshed or moved.rearm:  # views grew: fresh numbers, arm again
            self._merge_drives(vm, await self.hypervisor.drives(vm.name), rearm=True)
        if moved.arrived:
            state = self._arrived_paused(vm, state)
        self._observe(vm, state)
        if vm.machine.state in (VmState.PAUSED_ENOSPC, VmState.PAUSED_ENOSPC_UNMANAGED) or any(
            e.nospace and e.drive in vm.drives for e in state.errors
        ):
            self._flag_enospc_drives(vm, state)
        for d in list(vm.drives.values()):
            await self._evaluate(vm, d)
            await self._job_step(vm, d)
        await self._after_check(vm)

    def _observe(self, vm: Vm, state: RunState) -> None:
        """Feed one fresh look at the VM to its machine and carry out the notes."""
        m = vm.machine
        managed = frozenset(vm.drives)
        event = classify(state.running, state.pause_reason, state.errors, managed)
        unmanaged = tuple(sorted(e.drive for e in state.errors
                                 if e.nospace and e.drive not in managed))
        reason = state.pause_reason or (None if state.running else PauseReason.OTHER)
        was_expected = m.expect_resume
        now = self.clock.now()
        for action in m.apply(event, now, reason=reason, unmanaged=unmanaged):
            if action is Action.NOTE_PAUSED:
                assert reason is not None
                self.observer.notify(Paused(vm.name, reason))
                log.info("vm paused", vm=vm.name, reason=reason.value,
                         state=m.state.value)
            elif action is Action.WARN_UNMANAGED:
                for e in state.errors:
                    if e.drive in unmanaged:
                        log.warning("vm paused for lack of space on a drive autoextend does "
                                    "not manage; leaving it paused", vm=vm.name,
                                    drive=e.drive, path=e.path)
                self.observer.notify(UnmanagedEnospc(vm.name, unmanaged))
            elif action is Action.NOTE_RUNNING:
                if not was_expected:
                    self.observer.notify(Resumed(vm.name, False))
                    log.info("vm runs again (resumed by someone else)", vm=vm.name)
        if state.running:
            m.expect_resume = False
            m.ran_stably(now, self.resume_settings.backoff_max_s)
        m.errors = state.errors

    def _merge_drives(self, vm: Vm, infos: list[DriveInfo], *, rearm: bool) -> None:
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
                self.observer.notify(DriveSeen(info, volume, d.cap))
                log.info("drive added", vm=vm.name, drive=info.drive, volume=str(volume),
                         physical=info.physical, capacity=info.capacity,
                         job=info.job or None, job_need=info.job_need or None)
                continue
            d.update_info(info, cap=policy.cap(info.capacity, self.policy_for(info, volume)))
            self.observer.notify(DriveSeen(info, volume, d.cap))
            if rearm and not d.in_flight:
                d.disarmed()  # the hypervisor may have lost it: arm again below
        for name in set(vm.drives) - seen:
            d = vm.drives.pop(name)
            if d.in_flight:
                self._count_in_flight(-1)
            self.observer.notify(DriveGone(vm.name, name, d.volume))
            log.info("drive removed", vm=vm.name, drive=name)

    def _flag_enospc_drives(self, vm: Vm, state: RunState) -> None:
        """A VM paused for ENOSPC: flag the managed drives the hypervisor names, and those
        inside their watermark (the ENOSPC event may have been missed, and the highest
        written offset does not always reach the device size at an ENOSPC)."""
        named = {e.drive for e in state.errors if e.nospace}
        now = self.clock.now()
        for d in vm.drives.values():
            if d.enospc or d.in_flight:
                continue
            pol = self.policy_for(d.info, d.volume)
            info = self._effective(vm, d.info)  # frozen view: the size it was extended to
            # The hypervisor keeps naming a drive until the VM runs again: act on that once.
            named_now = d.name in named and d.name not in vm.machine.full_drives
            if named_now or policy.needs_extension(info.allocation, info.physical, pol):
                self._flag_enospc(vm, d, now)

    def _flag_enospc(self, vm: Vm, d: DriveState, now: float) -> None:
        vm.machine.managed_drive_full(d.name)
        if d.state is ThresholdState.DISABLED:
            if not d.enospc:
                log.warning("enospc on a drive at its cap", vm=vm.name, drive=d.name,
                            volume=str(d.volume))
            d.mark_enospc_at_cap()
            return
        news = d.mark_exceeded(now, enospc=True)
        log.info("enospc", vm=vm.name, drive=d.name, new=news)
        if d.state is ThresholdState.EXCEEDED:
            self._start_extension(vm, d)

    async def _evaluate(self, vm: Vm, d: DriveState) -> None:
        """Decide what a drive needs, from its latest numbers. Never blocks on an extension."""
        if d.in_flight or d.name not in vm.drives:
            return
        if not migration.may_arm(vm.machine.migration):
            return  # incoming (the guest runs elsewhere yet) or departed
        info = self._effective(vm, d.info)
        pol = self.policy_for(info, d.volume)
        now = self.clock.now()
        if info.capacity <= 0:
            log.warning("drive reports no capacity; not extending", vm=vm.name, drive=d.name)
            return
        if d.state is ThresholdState.EXCEEDED:
            if now >= d.retry_at:
                self._start_extension(vm, d)
            else:
                self._wake_at(vm, d.retry_at)
            return
        full = (policy.needs_extension(info.allocation, info.physical, pol) or d.enospc
                or self._job_short(info, pol))
        if policy.at_cap(info.physical, info.capacity, pol):
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
        if self._frozen(vm, d.name):
            return  # extended while migrating out: this host's view did not grow
        wanted = policy.threshold(info.physical, pol)
        lost = d.state is ThresholdState.SET and (info.threshold == 0 or d.threshold != wanted)
        if d.state is ThresholdState.UNSET or lost:
            await self._arm(vm, d, wanted)

    async def _arm(self, vm: Vm, d: DriveState, threshold: int) -> None:
        if self.dry_run:
            log.info("dry-run: would arm threshold", vm=vm.name, drive=d.name,
                     threshold=threshold)
        else:
            await self.hypervisor.set_threshold(vm.name, d.info, threshold)
        d.armed(threshold)
        log.debug("threshold armed", vm=vm.name, drive=d.name, threshold=threshold,
                  physical=d.info.physical)

    # ----------------------------------------------------------------- resume and kill

    async def _after_check(self, vm: Vm) -> None:
        m = vm.machine
        if m.paused and not migration.may_resume(m.migration):
            held = f"left paused: {m.migration.value} (resumed where it runs next)"
            if m.last_action != held:
                m.record(held)
                log.info("vm paused during a migration: not resuming it here", vm=vm.name,
                         migration=m.migration.value)
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
            s = self.resume_settings
            due = m.resume_due_at(s.backoff_initial_s, s.backoff_max_s)
            if m.expect_resume and self.clock.now() < due:
                self._wake_at(vm, due)  # sent already; RESUME not seen yet
                return
            await self._act(vm, VmEvent.ROOM, "enospc")
        elif m.state is VmState.PAUSED_IO_ERROR:
            await self._io_error_step(vm)

    async def _io_error_step(self, vm: Vm) -> None:
        m = vm.machine
        s = self.resume_settings
        now = self.clock.now()
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
            self._wake_at(vm, kill_at)
        if self.lease_ok is not None and not self.lease_ok():
            m.probe_result(False, now, s.backoff_initial_s)
            log.info("not resuming: this host's lease is not valid", vm=vm.name)
            self._wake_at(vm, now + s.backoff_initial_s)
            return
        due = m.resume_due_at(s.backoff_initial_s, s.backoff_max_s)
        paths = ([e.path for e in m.errors if not e.nospace] or [e.path for e in m.errors]
                 or [d.info.path for d in vm.drives.values()])
        ok = await probe_all(self.probe, paths)
        now = self.clock.now()
        if not m.probe_result(ok, now, s.backoff_initial_s):
            if not ok:
                log.info("storage probe failed; vm stays paused", vm=vm.name, paths=paths)
            self._wake_at(vm, max(due, now + s.backoff_initial_s))
            return
        if self.clock.now() < due:
            self._wake_at(vm, due)
            return
        await self._act(vm, VmEvent.STORAGE_OK, "io-error",
                        detail="storage probe ok twice in a row")

    async def _act(self, vm: Vm, event: VmEvent, cause: str, detail: str = "") -> None:
        """Apply a check event; send the resume or kill it asks for."""
        m = vm.machine
        actions = m.apply(event, self.clock.now())
        if Action.RESUME in actions:
            if self.dry_run:
                log.info("dry-run: would resume", vm=vm.name, cause=cause)
                return
            m.expect_resume = True
            m.record(f"resumed after {cause}" + (f": {detail}" if detail else ""))
            await self.hypervisor.resume(vm.name)
            if cause == "io-error":
                self.observer.notify(IoErrorAction(vm.name, "resume", detail))
            else:
                self.observer.notify(Resumed(vm.name, True))  # autoextend_resumes_total: ENOSPC
            log.info("vm resumed", vm=vm.name, cause=cause, reason=detail or None,
                     attempt=m.resume_attempts)
        elif Action.KILL in actions:
            if self.dry_run:
                log.info("dry-run: would kill", vm=vm.name, reason=detail)
                return
            log.warning("killing vm", vm=vm.name, reason=detail)
            m.record(f"killed: {detail}")
            await self.hypervisor.kill(vm.name)
            self.observer.notify(IoErrorAction(vm.name, "kill", detail))
