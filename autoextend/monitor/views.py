"""The view check carried out: at every VM appearance, and as a continuous audit (issue 28).

The rule is :func:`~.viewcheck.judge_view` (pure; its module says why). This module reads
the sizes it needs and does what it says, from the VM's own task (the one owner of its
state):

* :meth:`ViewSteps.on_appear`, in the VM's first resync, before anything is armed: a VM
  that appears here *without* an incoming migration (a start, a service restart, a
  reconnect) has every managed drive's view compared with its volume's metadata size. A
  stale view under a guest that has not run (QEMU ``-S`` in ``prelaunch``, a libvirt domain
  starting up) is refreshed, and then that guest's process is stopped before it runs
  (:meth:`ViewSteps._restart` says why: QEMU keeps the length it opened the device with,
  so the refresh protects the next start, not this process); under a guest that has run,
  the guest is paused (:meth:`ViewSteps.hold`), unless it is paused for ENOSPC on that
  drive with its failed writes just past the view's end (``viewcheck.filled_view``: this
  host's own extension landed after the service died): then the view is refreshed and the
  VM's drives read again (:meth:`ViewSteps._catch_up`), and the guest is re-armed and
  resumed like any ENOSPC pause of autoextend's. An incoming VM is left to the
  migration protocol (``monitor/migrating.py`` refreshes it on arrival).
* :func:`audit`, at every full poll: one read of sizes per VG for the drives of every VM
  that is not migrating; a drive whose view is smaller than the metadata (and has no
  extension in flight or awaiting its retry, whose refresh would catch it up:
  :func:`extension_pending`) makes the monitor post
  :class:`ViewSuspect` to its VM. The VM's task reads that drive again
  (:meth:`ViewSteps.confirm`) and judges with what it knows *then* (a refresh may have
  landed, a migration or an extension may have started), so the audit's early read never
  pauses a guest by itself.

A guest paused for a stale view is counted (``StaleViewFound``, the metric
``autoextend_stale_views_total``), logged as an error naming what the operator should
check, and marked in ``VmMachine.stale_views``: ``ResumeSteps`` never resumes it (only an
operator can tell what the guest read through the stale view).

I/O cost, through :class:`ViewSizes` (``autoextend/service.py`` picks the source):

* lvm: one ``lvs --readonly`` report of the VG (the metadata sizes of all its LVs) plus one
  ``open``+``lseek`` per active LV (this host's device-mapper view). Per appearance: one
  report per VG the VM's drives use. Per full poll: one report per VG with a running,
  non-migrating VM's drive, plus, for each drive found stale, one ``lvs`` of that LV and one
  ``lseek`` in its VM's task before acting.
* loop stand-in (the lab): one ``stat`` of the volume's file (the metadata) and one sysfs
  read of the loop device's size (the view) per drive; no process.
* SPM-published sizes are not used: the published record (``capacity/published.py``)
  carries VG figures, not per-LV sizes.

``Checks.check_views`` off (the simulation's mutant, the stale-start negative control): no
check at appearance, no audit.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Protocol

from autoextend.checks import ALL_ON, Checks
from autoextend.errors import AutoextendError
from autoextend.monitor.context import MonitorContext, Sizes, ViewSizes, VmView
from autoextend.monitor.drive import DriveState, ThresholdState
from autoextend.monitor.migration import MigState
from autoextend.monitor.observer import StaleViewFound
from autoextend.monitor.protocols import RunState
from autoextend.monitor.resync import merge_drives
from autoextend.monitor.viewcheck import ViewAction, filled_view, judge_view
from autoextend.monitor.vm import ViewSuspect, log
from autoextend.volumes import VolumeNotFound, VolumeRef


class SizeSource(Protocol):
    async def size(self, volume: VolumeRef) -> int: ...

    async def metadata_size(self, volume: VolumeRef) -> int: ...


class PerVolumeSizes:
    """:class:`ViewSizes` over a volume backend's ``size`` and ``metadata_size``, one volume
    at a time (the loop stand-in: a ``stat`` and a sysfs read each, no process)."""

    def __init__(self, backend: SizeSource) -> None:
        self._backend = backend

    async def view_sizes(self, vg: str, volumes: Sequence[VolumeRef]
                         ) -> dict[VolumeRef, Sizes]:
        found: dict[VolumeRef, Sizes] = {}
        for volume in volumes:
            try:
                metadata = await self._backend.metadata_size(volume)
                found[volume] = Sizes(await self._backend.size(volume), metadata)
            except VolumeNotFound:
                continue
        return found


def extension_pending(d: DriveState) -> bool:
    """An extension of ``d`` is in flight, or failed and waits for its retry (a timed-out
    mailbox request may still be served late: the metadata then grows with no extension in
    flight here). Either way the extender refreshes this host's view when it runs."""
    return d.in_flight or (d.state is ThresholdState.EXCEEDED and d.attempts > 0)


def judge(found: Sizes, *, in_flight: bool, guest_has_run: bool,
          deferred: int = 0) -> ViewAction:
    """:func:`~.viewcheck.judge_view` for a drive of a VM that is not migrating. An extension
    in flight counts as extending to the metadata size: the extender refreshes this host's
    view when it lands (its contract), whatever size the metadata reached meanwhile, so
    its drive's view is not judged until it has. ``deferred``: the size the drive was
    extended to without a refresh because its VM migrates out (``VmMachine.
    deferred_sizes``: set by the extension at once, possibly before the VM's machine has
    stepped to ``migrating-out``): an extension of this host's up to that size."""
    extending_to = found.metadata if in_flight else (deferred or None)
    return judge_view(found.view, found.metadata, extending_to=extending_to,
                      guest_has_run=guest_has_run)


def paused_enospc_on(state: RunState, drive: str) -> bool:
    """The VM is paused, and the hypervisor names ``drive`` as out of space."""
    return not state.running and any(e.nospace and e.drive == drive for e in state.errors)


async def read_sizes(source: ViewSizes, volumes: Iterable[VolumeRef]
                     ) -> dict[VolumeRef, Sizes]:
    """Sizes of ``volumes``, one :meth:`ViewSizes.view_sizes` call per VG."""
    by_vg: dict[str, set[VolumeRef]] = defaultdict(set)
    for volume in volumes:
        by_vg[volume.vg].add(volume)
    found: dict[VolumeRef, Sizes] = {}
    for vg, members in sorted(by_vg.items()):
        found.update(await source.view_sizes(vg, sorted(members)))
    return found


class ViewSteps:
    """Carries out the view check for one VM at a time, from the VM's own task."""

    def __init__(self, ctx: MonitorContext, checks: Checks = ALL_ON) -> None:
        self._ctx = ctx
        # Only the simulation's view-check mutant and the stale-start negative control pass
        # checks.check_views off (autoextend/checks.py).
        self._check = checks.check_views

    @property
    def source(self) -> ViewSizes | None:
        return self._ctx.view_sizes if self._check else None

    async def on_appear(self, vm: VmView, state: RunState) -> bool:
        """The check at the VM's appearance (its first resync). True when the VM was stopped
        (a stale view under a guest that has not run: see :meth:`_restart`); the caller
        then stops looking at it."""
        m = vm.machine
        source = self.source
        if m.views_checked or not vm.drives:
            return False
        if source is None or m.migration is not MigState.NONE:
            # Off, or incoming: the migration protocol refreshes on arrival (judge_view
            # says OK for every drive of a migrating VM; no need to read).
            m.views_checked = True
            return False
        sizes = await read_sizes(source, (d.volume for d in vm.drives.values()))
        refreshed: list[str] = []
        grown = False
        for d in list(vm.drives.values()):
            found = sizes.get(d.volume)
            if found is None:
                continue
            filled = filled_view(found.view, d.info.allocation,
                                 paused_enospc_here=paused_enospc_on(state, d.name))
            action = judge_view(found.view, found.metadata, guest_has_run=not state.prelaunch,
                                filled=filled)
            if action is ViewAction.REFRESH:
                await self._refresh(vm, d.name, d.volume, found, "appear")
                refreshed.append(d.name)
            elif action is ViewAction.GROWN:
                await self._catch_up(vm, d.name, d.volume, found, d.info.allocation)
                grown = True
            elif action in (ViewAction.PAUSE, ViewAction.SHRUNK):
                await self.hold(vm, d.name, d.volume, found, "appear")
        if grown:  # the views grew: fresh numbers, armed again by the caller's look
            merge_drives(self._ctx, vm, await self._ctx.hypervisor.drives(vm.name), rearm=True)
        m.views_checked = True  # only now: a failed read or refresh is retried at next look
        if refreshed:
            await self._restart(vm, refreshed)
        return bool(refreshed)

    async def confirm(self, vm: VmView, message: ViewSuspect) -> None:
        """The audit's suspicion, judged again from a fresh read of those drives and a fresh
        run state (a guest still in ``prelaunch`` gets its view refreshed, not a pause)."""
        source, m = self.source, vm.machine
        drives = [vm.drives[n] for n in message.drives
                  if n in vm.drives and n not in m.stale_views]
        if (source is None or not drives or m.migration is not MigState.NONE
                or m.deferred_sizes):
            return
        sizes = await read_sizes(source, (d.volume for d in drives))
        state = await self._ctx.hypervisor.run_state(vm.name)
        for d in drives:
            found = sizes.get(d.volume)
            if found is None:
                continue
            match judge(found, in_flight=extension_pending(d),
                        guest_has_run=not state.prelaunch,
                        deferred=m.deferred_sizes.get(d.name, 0)):
                case ViewAction.REFRESH:
                    await self._refresh(vm, d.name, d.volume, found, "audit")
                    await self._restart(vm, [d.name])
                    return
                case ViewAction.PAUSE | ViewAction.SHRUNK:
                    await self.hold(vm, d.name, d.volume, found, "audit")
                case ViewAction.OK:
                    pass

    async def _refresh_view(self, volume: VolumeRef, found: Sizes, problem: str) -> int:
        """Refresh this host's view of ``volume``; its new size. Raises when this host has
        no way to refresh views (``problem`` says what is wrong with the one it has)."""
        views = self._ctx.views
        if views is None:
            raise AutoextendError(f"{volume}: this host's view {problem} ({found.view} bytes, "
                                  f"metadata {found.metadata}) and there is no way to "
                                  "refresh it")
        return await views.refresh(volume)

    async def _refresh(self, vm: VmView, drive: str, volume: VolumeRef, found: Sizes,
                       when: str) -> None:
        size = await self._refresh_view(volume, found, "is stale")
        log.warning("stale view refreshed before the guest ran", vm=vm.name, drive=drive,
                    volume=str(volume), view=found.view, metadata=found.metadata, size=size)
        vm.machine.record(f"refreshed a stale view of {drive} before the guest ran")
        self._ctx.observer.notify(StaleViewFound(vm.name, drive, volume, when, found.view,
                                                 found.metadata, "refresh"))

    async def _catch_up(self, vm: VmView, drive: str, volume: VolumeRef, found: Sizes,
                        allocation: int) -> None:
        """The refresh an extension of this host's missed: the guest paused for ENOSPC at
        this view's end and the volume grew since (``viewcheck``: GROWN). Not a stale view:
        not counted as one; the guest is resumed by the usual ENOSPC path once its drives
        have room."""
        size = await self._refresh_view(volume, found, "is behind the volume's metadata")
        log.warning("view behind the volume's metadata under a guest paused for ENOSPC at "
                    "its end (an extension of this host's landed while the service was "
                    "down): refreshed; the guest resumes as from any ENOSPC pause",
                    vm=vm.name, drive=drive, volume=str(volume), view=found.view,
                    metadata=found.metadata, allocation=allocation, size=size)
        vm.machine.record(f"refreshed the view of {drive}: an extension landed while the "
                          "service was down")

    async def _restart(self, vm: VmView, drives: list[str]) -> None:
        """Stop a guest that has not run, whose views were just refreshed under it.

        Why: the hypervisor opened the drive before the refresh, and QEMU keeps a block
        device's length from when it opened it (seen with QEMU 7.2: after the loop device
        grew under a ``-S`` QEMU, the ``host_device`` node still said 64 MiB, reads past it
        returned zeros, and neither ``blockdev-reopen`` of the node nor ``cont`` re-read the
        length; ``block_resize`` of the node is refused while qcow2 uses it). Refreshing
        the view therefore protects the *next* start only; this process would still read
        zeros. The guest has not run, so stopping it loses nothing: the management sees the
        start fail and starts it again, on the refreshed view.
        """
        names = ", ".join(drives)
        vm.machine.record(f"stopped before it ran: stale view of {names} (refreshed; start it "
                          "again)")
        log.error("guest stopped before it ran: its process opened a stale view of its "
                  "volume; the view is refreshed now, start the guest again", vm=vm.name,
                  drives=drives)
        if self._ctx.dry_run:
            log.info("dry-run: would stop the guest", vm=vm.name)
            return
        await self._ctx.hypervisor.kill(vm.name)

    async def hold(self, vm: VmView, drive: str, volume: VolumeRef, found: Sizes,
                   when: str) -> None:
        """Pause a guest that ran on a stale view, or whose volume shrank under its view
        (larger than the metadata); it is never resumed automatically."""
        m = vm.machine
        shrunk = found.view > found.metadata
        if shrunk:
            why = (f"view {found.view} bytes > metadata {found.metadata} bytes: the volume "
                   f"shrank under the guest (found at {when})")
            m.record(f"paused: volume of {drive} shrank: {why}")
            dry = "dry-run: would pause a guest whose volume shrank under it"
            told = (
                "guest paused: its volume shrank under it (this host's view is larger than "
                "the volume's metadata size); a write past the new end may land on another "
                "volume's extents. autoextend will never resume it. Find which host reduced "
                "or removed the volume, check this guest's data and the volume that now owns "
                "the freed extents, then stop the guest or grow the volume back and resume it "
                "by hand")
        else:
            why = (f"view {found.view} bytes < metadata {found.metadata} bytes"
                   f" (found at {when})")
            m.record(f"paused: stale view of {drive}: {why}")
            dry = "dry-run: would pause a guest running on a stale view"
            told = (
                "guest paused: it ran on a stale view of its volume (smaller than the volume's "
                "metadata size); it may have read zeros past the view's end. autoextend will "
                "never resume it. Check which host extended or resized the volume and how this "
                "host's view fell behind (a device-mapper table not refreshed, a device "
                "reattached), check the guest's data, refresh the view (autoextend volume "
                "prepare), then resume or restart the guest by hand")
        m.stale_views[drive] = why
        sizes = {"vm": vm.name, "drive": drive, "volume": str(volume), "view": found.view,
                 "metadata": found.metadata}
        if self._ctx.dry_run:
            log.error(dry, **sizes)
        else:
            await self._ctx.hypervisor.suspend(vm.name)
        log.error(told, **sizes, when=when)
        self._ctx.observer.notify(StaleViewFound(vm.name, drive, volume, when, found.view,
                                                 found.metadata,
                                                 "shrunk" if shrunk else "pause"))


async def audit(ctx: MonitorContext, checks: Checks, vms: Sequence[VmView]) -> int:
    """One audit round (at a full poll): read every running, non-migrating VM's managed
    drives' sizes, one :meth:`ViewSizes.view_sizes` per VG, and post :class:`ViewSuspect`
    to each VM with a drive whose view looks stale. Returns the number of VMs told.
    Never raises an AutoextendError (a failed read is logged; the next full poll tries
    again)."""
    source = ctx.view_sizes
    if not checks.check_views or source is None:
        return 0
    # Not a VM with a deferred extension either: it migrates out (its view frozen on
    # purpose), possibly before its machine has stepped to migrating-out.
    watched = [vm for vm in vms if vm.machine.migration is MigState.NONE
               and not vm.machine.deferred_sizes
               and vm.machine.views_checked and not vm.machine.stale_views]
    try:
        sizes = await read_sizes(source, (d.volume for vm in watched
                                          for d in vm.drives.values()))
    except AutoextendError as exc:
        log.warning("view audit: cannot read volume sizes", error=str(exc))
        return 0
    told = 0
    for vm in watched:
        suspects = tuple(d.name for d in vm.drives.values() if d.volume in sizes
                         and judge(sizes[d.volume], in_flight=extension_pending(d),
                                   guest_has_run=True,
                                   deferred=vm.machine.deferred_sizes.get(d.name, 0))
                         is not ViewAction.OK)
        if suspects:
            vm.post(ViewSuspect(vm.name, suspects))
            told += 1
    return told
