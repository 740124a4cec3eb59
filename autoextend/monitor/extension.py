"""The extension task: one per drive at most, owned by its VM's task group.

It extends until the drive has its watermark of room (or is at its cap), then asks the VM's
task to look again (which re-arms and resumes): the VM task stays the only owner of the VM's
pause state. The extender checks the new size (its contract: "visible at that size on this
host"); the monitor does not check it a second time. The wait is bounded by one deadline,
:attr:`MonitorBase.extend_deadline_s` (see ``autoextend/timeouts.py``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import anyio

from autoextend.errors import AutoextendError
from autoextend.monitor import policy
from autoextend.monitor.drive import DriveState, ThresholdState
from autoextend.monitor.migrating import Migrations
from autoextend.monitor.observer import ExtendFinished, VgFull, VmCheckFailed
from autoextend.monitor.protocols import DriveInfo, ExtendOutcome, OutcomeCode, OutcomeKind
from autoextend.monitor.vm import POLL, SamplesAfterExtend, Vm, log
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


class Extensions(Migrations):
    def _start_extension(self, vm: Vm, d: DriveState, info: DriveInfo | None = None) -> None:
        """Start the drive's extension task. ``info``: numbers fresh enough to decide on
        (a threshold event for the threshold we armed); None queries the hypervisor first."""
        if d.state is not ThresholdState.EXCEEDED or vm.tg is None:
            return
        d.start_extend()
        self._count_in_flight(+1)
        vm.tg.start_soon(self._extend, vm, d, info, name=f"extend:{vm.name}:{d.name}")

    async def _extend(self, vm: Vm, d: DriveState, known: DriveInfo | None = None) -> None:
        """Extend until the drive has its watermark of room (or is capped); one task owns it.

        Any exception ends this extension only (counted as a failure, retried with backoff):
        never the VM's task, never the monitor.
        """
        bound = log.bind(vm=vm.name, drive=d.name, volume=str(d.volume))
        try:
            while True:
                again = await self._extend_once(vm, d, bound, known)
                known = None
                if not again:
                    break
        except Exception as exc:  # noqa: BLE001 - contained per drive, see docstring
            if d.in_flight:
                delay = self._retry_delay(d, OutcomeKind.FAILED)
                d.extend_failed(self.clock.now(), str(exc) or type(exc).__name__, delay)
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
                    self.observer.notify(VmCheckFailed(vm.name, repr(exc)))
        finally:
            if vm.drives.get(d.name) is d:
                self._count_in_flight(-1)
        if vm.drives.get(d.name) is d:
            vm.post(POLL)  # the VM's task re-checks: re-arm, resume, retry

    def _retry_delay(self, d: DriveState, kind: OutcomeKind) -> float:
        if kind is OutcomeKind.REJECTED:
            return self.settings.retry_max_s
        return policy.backoff(d.attempts + 1, self.settings.retry_initial_s,
                              self.settings.retry_max_s)

    def _space_held(self, vm: Vm, d: DriveState) -> str | None:
        """Why the VG's level holds this extension back (None: go ahead)."""
        if self.space_gate is None:
            return None
        paused = d.enospc or vm.machine.state is VmState.PAUSED_ENOSPC
        return self.space_gate(d.volume, paused)

    async def _fresh(self, vm: Vm, d: DriveState) -> DriveInfo:
        for info in await self.hypervisor.drives(vm.name):
            # The same name on another path is another volume (a pivot or a snapshot made
            # a new top): this extension must not go on with the new volume's numbers.
            if info.drive == d.name and info.path == d.info.path:
                d.update_info(info)
                return info
        raise DriveVanished(vm.name, d.name)

    async def _extend_once(
        self, vm: Vm, d: DriveState, bound: Any, known: DriveInfo | None = None
    ) -> bool:
        """One extension. Returns True when the drive needs another one right away.

        Phases (seconds, see ``observer.extend_finished``): ``wait`` (event received to this
        task), ``decision`` (fresh numbers, unless the event gave them, and the policy),
        the extender's (``extend``, ``refresh``; its size check is part of ``refresh``),
        ``rearm`` and ``total``.
        """
        t_event = d.exceeded_at if d.exceeded_at is not None else self.clock.now()
        t_start = self.clock.now()
        if known is None:
            info = await self._fresh(vm, d)
        else:
            info = known
            d.update_info(info)
        info = self._effective(vm, info)
        pol = self.policy_for(info, d.volume)
        t_decided = self.clock.now()
        target = max(policy.next_size(info.physical, info.capacity, pol),
                     self._job_need(info, pol))
        if target <= info.physical:
            self._disable(vm, d)
            self.observer.notify(
                ExtendFinished(vm.name, d.name, d.volume, None, info.physical))
            return False
        if not d.enospc and not self._job_short(info, pol) and not policy.needs_extension(
                info.allocation, info.physical, pol):
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
        held = self._space_held(vm, d)
        if held is not None:
            delay = self._retry_delay(d, OutcomeKind.FAILED)
            d.extend_failed(self.clock.now(), held, delay)
            bound.warning("extension held back", reason=held, retry_in_s=round(delay, 3))
            return False
        if self.dry_run:
            bound.info("dry-run: would extend", physical=info.physical, size=target)
            d.extend_failed(self.clock.now(), "dry-run", self.settings.retry_max_s)
            return False
        bound.info("extending", physical=info.physical, size=target,
                   allocation=info.allocation, wait_s=round(t_start - t_event, 6))
        deadline = self.extend_deadline_s
        outcome: ExtendOutcome | None = None
        with anyio.move_on_after(deadline):
            if await self._may_refresh(vm):
                outcome = await self.extender.extend(d.volume, target)
            else:  # migrating out: grow the volume, leave this host's view (migration.py)
                outcome = await self.extender.extend(d.volume, target, refresh=False)
        if outcome is None:
            outcome = ExtendOutcome(OutcomeKind.FAILED, 0, f"no answer within {deadline} s",
                                    code=OutcomeCode.TIMEOUT)
        t_extended = self.clock.now()
        if not outcome.ok:
            delay = self._retry_delay(d, outcome.kind)
            d.extend_failed(self.clock.now(), outcome.reason, delay)
            self.observer.notify(ExtendFinished(vm.name, d.name, d.volume, outcome.kind,
                                                outcome.size, {"extender": t_extended - t_decided}))
            if outcome.code is OutcomeCode.VG_FULL:
                self.observer.notify(VgFull(vm.name, d.name, d.volume))
                bound.error("volume group cannot satisfy the extension", size=target,
                            reason=outcome.reason, retry_in_s=round(delay, 3))
            else:
                bound.warning("extension failed", result=outcome.kind.value,
                              reason=outcome.reason, code=outcome.code.value, attempts=d.attempts,
                              retry_in_s=round(delay, 3))
            return False
        if not outcome.refreshed:
            sizes = vm.machine.deferred_sizes
            sizes[d.name] = max(sizes.get(d.name, 0), outcome.size, target)
            d.extend_done(0)  # nothing to arm: this host's view did not grow
            self.observer.notify(ExtendFinished(
                vm.name, d.name, d.volume, OutcomeKind.OK, outcome.size,
                {**outcome.phases, "extender": t_extended - t_start}))
            bound.info("extended; refresh deferred until the migration ends",
                       size=outcome.size, seen=d.info.physical,
                       duration_s=t_extended - t_start)
            return False
        # The extender checked the size this host sees (its contract): that is the new
        # physical size. No second query: the allocation moves on anyway, and a write past
        # the new threshold fires it (the safety-net poll catches the rest).
        info = dataclasses.replace(info, physical=max(info.physical, outcome.size))
        d.update_info(info)
        resolver = self.policy_for
        if isinstance(resolver, SamplesAfterExtend) and resolver.sample_after_extend:
            # Write-rate chunks: a fresh look now measures the rate over this extension,
            # so the threshold re-armed below already covers a burst.
            info = await self._fresh(vm, d)
            pol = self.policy_for(info, d.volume)
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
            "decision": t_decided - t_start,
            "extender": t_extended - t_decided,
            "rearm": t_armed - t_extended,
            "total": t_armed - t_event,
        }
        self.observer.notify(
            ExtendFinished(vm.name, d.name, d.volume, OutcomeKind.OK, info.physical, phases))
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
