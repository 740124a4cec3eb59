"""What one look at a VM feeds into its state: its drives, and its pause machine.

The VM's task (``monitor/vmtask.py``) owns the one resync path; these are its two steps
that take in what the hypervisor said: :func:`merge_drives` (new drives, new numbers, drives
gone) and :func:`observe` (one event for the VM's :class:`~.vmstate.VmMachine`, and the
notes it asks for). Only the VM's task calls them, so the VM's state has one owner.
"""

from __future__ import annotations

from autoextend.monitor import policy
from autoextend.monitor.context import MonitorContext, VmView
from autoextend.monitor.drive import DriveState
from autoextend.monitor.observer import DriveGone, DriveSeen, Paused, Resumed, UnmanagedEnospc
from autoextend.monitor.protocols import ENOSPC_TO_GUEST, DriveInfo, PauseReason, RunState
from autoextend.monitor.vm import log
from autoextend.monitor.vmstate import Action, classify


def observe(ctx: MonitorContext, vm: VmView, state: RunState) -> None:
    """Feed one fresh look at the VM to its machine and carry out the notes."""
    m = vm.machine
    managed = frozenset(vm.drives)
    event = classify(state.running, state.pause_reason, state.errors, managed)
    unmanaged = tuple(sorted(e.drive for e in state.errors
                             if e.nospace and e.drive not in managed))
    reason = state.pause_reason or (None if state.running else PauseReason.OTHER)
    was_expected = m.expect_resume
    now = ctx.clock.now()
    for action in m.apply(event, now, reason=reason, unmanaged=unmanaged):
        if action is Action.NOTE_PAUSED:
            assert reason is not None
            ctx.observer.notify(Paused(vm.name, reason))
            log.info("vm paused", vm=vm.name, reason=reason.value,
                     state=m.state.value)
        elif action is Action.WARN_UNMANAGED:
            for e in state.errors:
                if e.drive in unmanaged:
                    log.warning("vm paused for lack of space on a drive autoextend does "
                                "not manage; leaving it paused", vm=vm.name,
                                drive=e.drive, path=e.path)
            ctx.observer.notify(UnmanagedEnospc(vm.name, unmanaged))
        elif action is Action.NOTE_RUNNING:
            if not was_expected:
                ctx.observer.notify(Resumed(vm.name, False))
                log.info("vm runs again (resumed by someone else)", vm=vm.name)
    if state.running:
        m.expect_resume = False
        m.ran_stably(now, ctx.resume.backoff_max_s)
    m.errors = state.errors


def merge_drives(ctx: MonitorContext, vm: VmView, infos: list[DriveInfo], *, rearm: bool
                 ) -> None:
    """Take in the drives a fresh look found: new ones, new numbers, ones gone. A drive
    under the same name on another path is another volume (a new DriveState)."""
    seen = set()
    replaced = False
    for info in infos:
        volume = ctx.hypervisor.volume_of(info)
        if volume is None:
            continue
        if info.error_policy in ENOSPC_TO_GUEST and not ctx.settings.manage_enospc_to_guest:
            if info.drive not in vm.drives:
                log.debug("drive left alone: its error policy hands ENOSPC to the guest",
                          vm=vm.name, drive=info.drive, error_policy=info.error_policy)
            continue
        seen.add(info.drive)
        d = vm.drives.get(info.drive)
        if d is None or d.info.path != info.path:
            replaced = replaced or d is not None
            pol = ctx.policy_for(info, volume)
            d = DriveState(info, volume, policy.cap(info.capacity, pol))
            vm.drives[info.drive] = d
            ctx.observer.notify(DriveSeen(info, volume, d.cap))
            log.info("drive added", vm=vm.name, drive=info.drive, volume=str(volume),
                     physical=info.physical, capacity=info.capacity,
                     job=info.job or None, job_need=info.job_need or None)
            if info.error_policy in ENOSPC_TO_GUEST:
                log.warning("drive's error policy hands ENOSPC to the guest as an I/O error "
                            "(the write is lost): set error_policy='stop' or 'enospace'",
                            vm=vm.name, drive=info.drive, volume=str(volume),
                            error_policy=info.error_policy)
            continue
        d.update_info(info, cap=policy.cap(info.capacity, ctx.policy_for(info, volume)))
        ctx.observer.notify(DriveSeen(info, volume, d.cap))
        if rearm and not d.in_flight:
            d.disarmed()  # the hypervisor may have lost it: arm again below
    for name in set(vm.drives) - seen:
        d = vm.drives.pop(name)
        replaced = True
        ctx.observer.notify(DriveGone(vm.name, name, d.volume))
        log.info("drive removed", vm=vm.name, drive=name)
    if replaced:  # an extension of the old drive no longer counts as in flight
        ctx.in_flight_changed()
