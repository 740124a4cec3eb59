"""The monitor's side of live migration: ask, step the VM's migration state, act.

The rules and the invariant they keep are in ``monitor/migration.py``; this module carries
them out for one VM, from the VM's own task (the one owner of its state):

* :meth:`MigrationSteps.check`, on a resync: ask the hypervisor when something may
  have changed (a ``MigrationChanged`` event, a migration pause, a VM not yet asked about,
  or one whose migration is not over), step the machine, and refresh every managed volume
  of the VM on this host when the step says so (destination: on arrival and completion;
  source: after a failed or cancelled migration).
* :meth:`MigrationSteps.freeze_early`, on a ``MigrationChanged`` (also while the VM's task
  backs off after a failed look): the step into MIGRATING_OUT at once, before a look whose
  hypervisor calls may wait behind the migration's job.
* :meth:`MigrationSteps.may_refresh`, from an extension task, right before its extender would
  refresh: False while the VM migrates out (then the extension only grows the volume in
  metadata and records the size in ``VmMachine.deferred_sizes``).
* :func:`effective`: a drive's numbers as policy must see them while its
  view is frozen (the size it was extended to, not the size this host sees), so that one
  extension per need is made, not one per poll.

``Checks.protect_views`` (``autoextend/checks.py``), given to the monitor when it is built,
is on in production; only the migration tests' negative control builds a monitor with it
off, which then ignores migrations, as it did before it knew of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from autoextend.checks import ALL_ON, Checks
from autoextend.monitor import migration
from autoextend.monitor.context import MonitorContext, VmView
from autoextend.monitor.migration import MigAction, MigState, Phase, Role
from autoextend.monitor.observer import MigrationNoted
from autoextend.monitor.protocols import DriveInfo, MigrationChanged, PauseReason, RunState
from autoextend.monitor.vm import log
from autoextend.monitor.vmstate import VmMachine
from autoextend.volumes import VolumeRef


@dataclass(frozen=True)
class MigrationCheck:
    refreshed: bool = False  # this host's views were refreshed: read the drives again
    rearm: bool = False      # arm every threshold again
    arrived: bool = False    # an incoming migration just completed here
    stopped: bool = False    # stopped before it ran here (a short activation): it goes away


NOTHING = MigrationCheck()


class MigrationSteps:
    """Carries out the migration rules for one VM at a time, from the VM's own task."""

    def __init__(self, ctx: MonitorContext, checks: Checks = ALL_ON) -> None:
        self._ctx = ctx
        # Protects monitor/migration.py's invariant (the source never refreshes its view
        # during a migration; the destination refreshes before it arms). Only the migration
        # tests' negative control passes checks.protect_views off.
        self._protect = checks.protect_views

    @property
    def aware(self) -> bool:
        return self._protect

    async def check(self, vm: VmView, state: RunState) -> MigrationCheck:
        """Step the VM's migration state from a fresh look, if anything may have changed."""
        if not self.aware:
            return NOTHING
        m = vm.machine
        if not (m.migration_stale or m.migration is not MigState.NONE
                or (not state.running and state.pause_reason is PauseReason.MIGRATION)):
            return NOTHING
        hypervisor = self._ctx.hypervisor
        info = await hypervisor.migration(vm.name)
        before = m.migration
        result = migration.step(before, info)
        refreshed = False
        sizes: dict[VolumeRef, int] = {}
        if MigAction.REFRESH_ALL in result.actions:
            # Repeated at every look while incoming: quietly after the first.
            quiet = before is MigState.INCOMING and result.state is MigState.INCOMING
            sizes = await self._refresh_all(vm, role=info.role, quiet=quiet)
            refreshed = True
        if result.state is MigState.INCOMING:
            m.incoming_sizes.update(sizes)
        # Only now (a failed refresh raises, and the next look steps again).
        m.migration = result.state
        m.migration_stale = False
        if result.state is not MigState.MIGRATING_OUT:
            m.deferred_sizes.clear()
        self._note(vm, info, before, result)
        # Also when this host first saw the VM after its migration (a look that failed for
        # the whole incoming job, a restart): the handoff (monitor/handoff.py) asks then.
        arrived = (result.state is MigState.NONE and info.role is Role.DESTINATION
                   and (before is MigState.INCOMING or info.phase is Phase.COMPLETED))
        if arrived and await self._stopped_short(vm, info, sizes, state):
            return MigrationCheck(refreshed, stopped=True)
        if result.state is not MigState.INCOMING:
            m.incoming_sizes.clear()
        return MigrationCheck(refreshed, MigAction.REARM in result.actions, arrived)

    async def _stopped_short(self, vm: VmView, info: migration.MigrationInfo,
                             sizes: dict[VolumeRef, int], state: RunState) -> bool:
        """Stop an arrived guest that has not run here whose hypervisor activated a drive
        with a length smaller than the view refreshed since (``migration.short_activation``;
        like ``ViewSteps._restart``: QEMU reads zeros past that length, and nothing makes it
        read the length again). The management's migration then fails at its ``cont`` and
        the source keeps the guest."""
        views = {d.name: sizes[d.volume] for d in vm.drives.values() if d.volume in sizes}
        incoming = vm.machine.incoming_sizes
        covered = {d.name: incoming[d.volume] for d in vm.drives.values()
                   if d.volume in incoming}
        short = migration.short_activation(info.node_lengths, views,
                                           guest_has_run=state.running, covered=covered)
        if not short:
            return False
        lengths = {d: n for d, n in info.node_lengths or () if d in short}
        vm.machine.record(f"stopped before it ran: its hypervisor activated {', '.join(short)} "
                          "on a stale view (set late-block-activate on the destination)")
        log.error("arrived guest stopped before it ran: the hypervisor activated its drives "
                  "with a length smaller than this host's view, refreshed after the "
                  "activation; it would read zeros past that length. The management must set "
                  "the late-block-activate migration capability on the destination (QEMU "
                  "then activates the drives at cont) or prepare the destination's views "
                  "before the migration completes; resume the guest on its source",
                  vm=vm.name, drives=list(short), lengths=lengths,
                  views={d: views[d] for d in short})
        if self._ctx.dry_run:
            log.info("dry-run: would stop the guest", vm=vm.name)
            return False
        await self._ctx.hypervisor.kill(vm.name)
        return True

    async def freeze_early(self, vm: VmView) -> None:
        """On news of a migration, before the look that may wait on the hypervisor (libvirt's
        block stats wait behind a migration's job): a VM found migrating out is frozen now.
        Only the step into MIGRATING_OUT is taken here: it needs no drives and no refresh;
        every other step waits for :meth:`check` at the full look."""
        m = vm.machine
        if not self.aware or m.migration is not MigState.NONE:
            return
        info = await self._ctx.hypervisor.migration(vm.name)
        result = migration.step(MigState.NONE, info)
        if result.state is not MigState.MIGRATING_OUT:
            return
        m.migration = result.state
        self._note(vm, info, MigState.NONE, result)

    def _note(self, vm: VmView, info: migration.MigrationInfo, before: MigState,
              result: migration.MigStep) -> None:
        if MigAction.NOTE in result.actions:
            log.info("migration", vm=vm.name, role=info.role.value, phase=info.phase.value,
                     state=result.state.value, was=before.value)
            vm.machine.record(f"migration: {info.role.value} {info.phase.value}")
            self._ctx.observer.notify(MigrationNoted(vm.name, info.role.value, info.phase.value,
                                                result.state.value))
        if MigAction.FREEZE_VIEWS in result.actions:
            log.info("vm migrates out: extending without refreshing this host's view until "
                     "the migration ends", vm=vm.name)

    async def _refresh_all(self, vm: VmView, *, role: Role, quiet: bool = False
                           ) -> dict[VolumeRef, int]:
        """Refresh every managed volume of the VM on this host; their new sizes."""
        views = self._ctx.views
        if views is None:
            log.warning("cannot refresh for a migration: no volume views", vm=vm.name)
            return {}
        volumes = sorted({d.volume for d in vm.drives.values()})
        sizes: dict[VolumeRef, int] = {}
        for volume in volumes:
            size = sizes[volume] = await views.refresh(volume)
            (log.debug if quiet else log.info)(
                "volume refreshed for a migration", vm=vm.name, volume=str(volume), size=size,
                role=role.value)
        return sizes

    async def may_refresh(self, vm: VmView) -> bool:
        """Whether an extension of one of the VM's drives may refresh this host's view now.

        Asks the backend whether an outgoing migration may have started that the VM's task
        has not stepped yet (``Hypervisor.outgoing_migration``: over QMP from the
        ``MIGRATION`` events already read, no command, unless one says a migration runs
        or QEMU sends none; over libvirt one ``jobStats``). One found freezes the view
        from now on. ``monitor/migration.py`` argues why this check is enough.
        """
        if not self.aware:
            return True
        if not migration.may_refresh(vm.machine.migration):
            return False
        hypervisor = self._ctx.hypervisor
        if self._ctx.fast_resume:
            outgoing = await hypervisor.outgoing_migration(vm.name)
        else:  # the old path (the bench's comparison): the full probe every time
            info = await hypervisor.migration(vm.name)
            outgoing = info.role is Role.SOURCE and info.running
        if outgoing:
            vm.post(MigrationChanged(vm.name))  # the VM's task steps its machine
            return False
        return True



def effective(machine: VmMachine, info: DriveInfo) -> DriveInfo:
    """``info`` with the size its volume was extended to while this host's view is frozen,
    when that is larger than what this host sees."""
    deferred = machine.deferred_sizes.get(info.drive, 0)
    if deferred <= info.physical:
        return info
    return dataclasses.replace(info, physical=deferred)


def frozen(machine: VmMachine, drive: str) -> bool:
    """The drive was extended while the view is frozen: nothing to arm until it ends."""
    return machine.deferred_sizes.get(drive, 0) > 0
