"""The destination's half of an ENOSPC pause's handoff: a VM that arrived paused.

A guest that its source paused for ENOSPC (and did not resume: ``monitor/migration.py``
forbids it while the migration runs) arrives paused here. Nothing the hypervisor says here
tells that pause from an operator's: QEMU migrates only its run state (``io-error`` says an
I/O error policy stopped it, not ENOSPC, not autoextend), libvirt reports the domain
PAUSED/USER, and a user ``stop`` after an ENOSPC pause changes neither. So the cause is
carried through the shared storage: the source keeps claiming its pause in its own in-use
record (``monitor/pauseclaims.py``), and this host adopts the claim only from a record
written after the guest arrived, at most once (``spm/handoff.py`` has the rule and why it
is enough). :meth:`HandoffSteps.check` runs in every resync of the VM, from its own task:

* on the arrival (the step from INCOMING to NONE) of a guest that is not running: the
  machine's :class:`~.arrival.Arrival` starts WAITING, with the records' baseline (or, in
  local mode, NO_CHANNEL: no claim can come);
* while WAITING: look for a fresh claim every :data:`LOOK_S`, up to :data:`WAIT_S`. Found:
  publish this host's tombstone first (the write must succeed), refresh the claimed volumes,
  flag their drives full, and from then on the pause is this host's ENOSPC pause (the
  monitor extends through the SPM if a drive is still full, re-arms and resumes under
  ``[resume]``). None in time: UNCLAIMED, never resumed as an ENOSPC pause here;
* while WAITING the pause is an other-pause to the machine (nothing resumes it); after it
  (no claim, or local mode) it is what the hypervisor here says it is, never more:
  libvirt's PAUSED/USER stays paused; QEMU's migrated ``io-error`` run state (a fact: an
  I/O error policy stopped the guest, on whatever host) follows ``[resume] policy`` as any
  I/O error pause does (probe the storage, resume or kill), which is also what the source
  would have done with it. That is how a QMP guest paused on ENOSPC is resumed in local
  mode, where there is no claim: resumed, it retries its write, and a drive still
  full pauses it again, now with the ENOSPC reported here (extended, resumed as usual).

The source never resumes the guest once it left; the claim's tombstone keeps a third host
from adopting the same pause after a later migration.
"""

from __future__ import annotations

import dataclasses

from autoextend.errors import AutoextendError
from autoextend.monitor.arrival import Arrival, ArrivalState, ClaimedPause
from autoextend.monitor.context import MonitorContext, VmView
from autoextend.monitor.protocols import PauseReason, RunState
from autoextend.monitor.vm import log

LOOK_S = 1.0   # a waiting VM's records are read again this often
WAIT_S = 60.0  # and for this long after the arrival


class HandoffSteps:
    """Decides, for one VM at a time, whether a pause it arrived with is this host's."""

    def __init__(self, ctx: MonitorContext) -> None:
        self._ctx = ctx

    async def check(self, vm: VmView, state: RunState, *, arrived: bool) -> RunState:
        """The run state as the pause machine must see it."""
        m = vm.machine
        if state.running:
            m.arrival = None
            return state
        if arrived:
            await self._arrived(vm)
        a = m.arrival
        if a is None:
            return state
        if a.state is ArrivalState.WAITING:
            await self._look(vm, a)
        if a.state is ArrivalState.ADOPTED:
            return dataclasses.replace(state, pause_reason=PauseReason.ENOSPC)
        if a.state is ArrivalState.WAITING:  # nothing is resumed before the claim's answer
            return dataclasses.replace(state, pause_reason=PauseReason.OTHER)
        return state  # the hypervisor's own word, as for any pause

    async def _arrived(self, vm: VmView) -> None:
        m = vm.machine
        if self._ctx.handoff is None:
            m.arrival = Arrival(ArrivalState.NO_CHANNEL)
            m.record("arrived paused from a migration; local mode: no record of the pause's "
                     "cause (an I/O error pause follows [resume] policy, any other stays)")
            log.warning("vm arrived paused from a migration; local mode has no record of "
                        "why its source paused it: only an I/O error pause may be resumed, "
                        "under [resume] policy", vm=vm.name)
            return
        now = self._ctx.clock.now()
        m.arrival = Arrival(ArrivalState.WAITING, deadline=now + WAIT_S)
        m.record("paused: arrived paused from a migration; looking for its source's claim")
        log.info("vm arrived paused from a migration; looking for its source's claim of "
                 "an ENOSPC pause", vm=vm.name, wait_s=WAIT_S)
        try:
            m.arrival.baseline = await self._ctx.handoff.baseline()
        except AutoextendError as err:
            log.warning("reading the pool's in-use records failed; trying again", vm=vm.name,
                        error=str(err))
        vm.wake_at(now + LOOK_S)

    async def _look(self, vm: VmView, a: Arrival) -> None:
        handoff = self._ctx.handoff
        assert handoff is not None
        now = self._ctx.clock.now()
        if now >= a.deadline:
            a.state = ArrivalState.UNCLAIMED
            vm.machine.record("left paused: arrived paused from a migration and no host "
                              "claimed the pause")
            log.warning("no host claimed the pause of a vm that arrived paused: leaving it "
                        "paused", vm=vm.name, waited_s=WAIT_S)
            return
        volumes = {d.volume for d in vm.drives.values()}
        try:
            if a.baseline is None:
                a.baseline = await handoff.baseline()
                found = None
            else:
                found = await handoff.claimed(vm.name, volumes, a.baseline)
            if found is not None:
                await handoff.adopt(vm.name, found)
        except AutoextendError as err:
            log.info("looking for a claim failed; trying again", vm=vm.name, error=str(err))
            found = None
        if found is None:
            vm.wake_at(min(now + LOOK_S, a.deadline))
            return
        await self._adopted(vm, a, found)

    async def _adopted(self, vm: VmView, a: Arrival, found: ClaimedPause) -> None:
        a.state = ArrivalState.ADOPTED
        a.origin, a.pause_id = found.origin, found.pause_id
        m = vm.machine
        views = self._ctx.views
        for d in vm.drives.values():
            if d.volume in found.volumes:
                m.managed_drive_full(d.name)
                if views is not None:
                    await views.refresh(d.volume)  # the view covers what the source wrote
        m.record(f"adopted host {found.origin}'s ENOSPC pause: resumed once its drives "
                 "have room")
        log.info("adopted the ENOSPC pause of a vm that arrived paused", vm=vm.name,
                 host_id=found.origin, pause_id=found.pause_id,
                 volumes=sorted(str(v) for v in found.volumes))
