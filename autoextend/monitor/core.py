"""The monitor: turns hypervisor events into extensions, re-arms, and resumes.

Structure (structured concurrency, every task has an owner)::

    Monitor.run
    ├── dispatcher        routes hypervisor events to the VM they concern
    ├── hypervisor.run    discovery + connections, sends events (bounded stream)
    ├── poller            every poll_interval_s, asks each VM to re-check (safety net)
    └── one task per VM   VmTask.run: its own bounded inbox and task group
        ├── at most one extension task per drive   (monitor/extension.py)
        └── at most one live timer (resume backoff, retry, kill deadline)

The objects, each with one job (none of them has a base class)::

    Monitor         routes events to VMs, owns the lifecycle (run, reload, drop), answers
                    status queries; counts nothing by hand
    VmTask          one per VM (monitor/vmtask.py): the only owner of its VmMachine, its
                    drives and its inbox; the one resync path
    MonitorContext  the shared dependencies and settings (monitor/context.py)
    Extensions      runs one drive's extension as ``plan.plan`` decides (monitor/extension.py)
    MigrationSteps  a live migration's views (monitor/migrating.py)
    JobSteps        block jobs paused for space, jobs that ended (monitor/jobs.py)
    ResumeSteps     resume or kill a paused VM (monitor/resume.py)
    ViewSteps       the view check at appearance, and the audit's findings (monitor/views.py)

Decisions are pure functions: ``plan.look`` / ``plan.plan`` (a drive), ``vmstate.step``
(a VM's pauses), ``migration.step`` (a VM's migration), ``pollplan`` (what a poll looks at).

Invariants:

* At most one extension is in flight per drive (DriveState EXTENDING is the token).
* autoextend resumes only what it caused: an ENOSPC pause, once every managed drive that
  paused it has room, and never one that involves a drive it does not manage. I/O-error
  pauses follow ``[resume] policy``. Operator, migration and unknown pauses are never resumed.
* Never shrink, never pass the cap (``policy.next_size``).
* An event is acted on at once; the poller only catches what events missed.
* No host ever runs the guest through a view of its volume smaller than one it wrote
  through: live migration defers the source's refreshes and refreshes the destination
  first (``monitor/migration.py`` has the invariant and the argument).
* No guest runs on a view of its volume smaller than the volume's metadata size: checked at
  every appearance that is not an incoming migration, before anything is armed, and audited
  at every full poll; a guest that ran on one is paused and never resumed by autoextend
  (``monitor/views.py``, the rule in ``monitor/viewcheck.py``; ``Checks.check_views``).
* An exception while handling one VM ends that VM's handling only (logged, counted, retried
  with backoff), never the monitor.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream

from autoextend.checks import ALL_ON, Checks
from autoextend.clock import Clock
from autoextend.monitor import migration, policy, pollplan
from autoextend.monitor.arrival import PauseHandoff
from autoextend.monitor.caps import CapBook, FullAllocation, MeasuredCaps
from autoextend.monitor.config import PolicySettings, ResumeSettings
from autoextend.monitor.context import InFlight, MonitorContext, ViewSizes, VolumeViews
from autoextend.monitor.extension import DriveVanished
from autoextend.monitor.holds import HoldFile
from autoextend.monitor.observer import (
    CleanStop,
    DriveGone,
    Fanout,
    MonitorObserver,
    NullObserver,
)
from autoextend.monitor.pauseclaims import ClaimBook, OwnPause
from autoextend.monitor.probe import StorageProbe, direct_read_probe
from autoextend.monitor.protocols import (
    Extender,
    Hypervisor,
    HypervisorEvent,
    VmAppeared,
    VmGone,
)
from autoextend.monitor.rate import DriveRates
from autoextend.monitor.throttle import Throttles
from autoextend.monitor.views import audit
from autoextend.monitor.vm import (
    POLL,
    RESYNC,
    LeaseOk,
    PolicyResolver,
    SpaceGate,
    default_policy_resolver,
    log,
)
from autoextend.monitor.vmstate import VmState
from autoextend.monitor.vmtask import Steps, VmTask
from autoextend.volumes import VolumeRef

__all__ = ["DriveVanished", "Monitor", "VolumeInUse", "default_policy_resolver", "percentile"]

HYPERVISOR_STREAM_SIZE = 1024


@dataclass(frozen=True)
class VolumeInUse:
    """A volume a VM's drive uses now, as the monitor knows it (a typed, read-only query
    for other parts: the capacity watcher's committed sizes and VGs, the reducer's "in use"
    refusal). Sizes in bytes: ``allocation``, ``physical`` and ``capacity`` as QEMU or
    libvirt last reported them, ``cap`` the most the volume may grow to."""

    vm: str
    drive: str
    volume: VolumeRef
    allocation: int
    physical: int
    capacity: int
    cap: int


class Monitor:
    """Routes hypervisor events to the VMs' tasks and owns their lifecycle."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        extender: Extender,
        settings: PolicySettings,
        clock: Clock,
        *,
        policy_for: PolicyResolver | None = None,
        observer: MonitorObserver | None = None,
        dry_run: bool = False,
        resume: ResumeSettings | None = None,
        probe: StorageProbe | None = None,
        lease_ok: LeaseOk | None = None,
        extend_deadline_s: float | None = None,
        views: VolumeViews | None = None,
        space_gate: SpaceGate | None = None,
        view_sizes: ViewSizes | None = None,
        checks: Checks = ALL_ON,
        spm_ok: Callable[[], bool] | None = None,
        failover_s: float | None = None,
        measure_full: FullAllocation | None = None,
        handoff: PauseHandoff | None = None, throttle_holds: str | None = None,
    ) -> None:
        """``space_gate``: why an extension must wait, or None (the capacity levels: at a
        VG's critical level only VMs paused on ENOSPC are extended). ``view_sizes``: where
        the view check reads this host's views and the metadata sizes
        (``monitor/views.py``); None: no view check. ``checks``: all on, except in a
        negative control or a simulation mutant (see ``autoextend/checks.py``). A guest's
        clean shutdown is told to the observer
        (:class:`~autoextend.monitor.observer.CleanStop`). ``spm_ok`` (mailbox mode: is
        the pool's SPM term valid now) and ``failover_s`` (how long an extension may take
        across a failover) are the write throttle's (``monitor/throttle.py``).
        ``measure_full``: ``qemu-img measure``'s fully allocated size, for the honest cap
        (caps.py; None: capacity x cap_factor). See handoff.py, holds.py (throttle_holds)."""
        resume = resume or ResumeSettings()
        book = CapBook(measure_full)
        resolver = MeasuredCaps(policy_for or default_policy_resolver(settings), book)
        self.rates = DriveRates(
            clock, settings.rate_half_life_s, settings.assumed_latency_s,
            lambda info, volume: policy.watermark(self.ctx.policy_for(info, volume)))
        outer = observer or NullObserver()
        self.ctx = MonitorContext(
            hypervisor, extender, settings, clock,
            policy_for=resolver,
            observer=outer, dry_run=dry_run, resume=resume,
            probe=probe or direct_read_probe(resume.probe_timeout_s), lease_ok=lease_ok,
            extend_deadline_override=extend_deadline_s, views=views, space_gate=space_gate,
            view_sizes=view_sizes, spm_ok=spm_ok, failover_s=failover_s, caps=book,
            handoff=handoff)
        self.claims = ClaimBook(clock)
        self.throttles = Throttles(self.ctx, self.rates, HoldFile(throttle_holds))
        self.ctx.observer = Fanout(self.rates, self.throttles, outer)
        self.ctx.in_flight = InFlight(lambda: self.extends_in_flight, self.ctx.observer)
        self._steps = Steps.of(self.ctx, self.throttles, checks)
        self._checks = checks
        self._vms: dict[str, VmTask] = {}
        self._tg: TaskGroup | None = None
        self._events_in: MemoryObjectReceiveStream[HypervisorEvent] | None = None
        self._next_poll = -math.inf  # when the poller wakes next (not started: now)
        self.polls = 0  # poll rounds posted so far (a test waits for N of them, then idle())

    # ----------------------------------------------------------------- what others set and read

    @property
    def hypervisor(self) -> Hypervisor:
        return self.ctx.hypervisor

    @property
    def extender(self) -> Extender:
        return self.ctx.extender

    @extender.setter
    def extender(self, extender: Extender) -> None:
        """Replace the extender (a test holds extensions back with a wrapper); the next
        extension uses it."""
        self.ctx.extender = extender

    @property
    def clock(self) -> Clock:
        return self.ctx.clock

    @property
    def observer(self) -> MonitorObserver:
        return self.ctx.observer

    @property
    def policy_for(self) -> PolicyResolver:
        return self.ctx.policy_for

    @property
    def resume_settings(self) -> ResumeSettings:
        return self.ctx.resume

    @property
    def views(self) -> VolumeViews | None:
        return self.ctx.views

    @property
    def settings(self) -> PolicySettings:
        return self.ctx.settings

    @property
    def dry_run(self) -> bool:
        return self.ctx.dry_run

    @property
    def extend_deadline_s(self) -> float:
        """How long one extension may take before it counts as failed (see timeouts.py)."""
        return self.ctx.extend_deadline_s

    @property
    def space_gate(self) -> SpaceGate | None:
        """Given at construction (the capacity levels): why an extension must wait, or None."""
        return self.ctx.space_gate

    @property
    def extends_in_flight(self) -> int:
        """Extensions in flight, counted from the VMs' drives (never kept by hand)."""
        return sum(vm.in_flight() for vm in self._vms.values())

    # ----------------------------------------------------------------- lifecycle

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. ``started()`` once the hypervisor's first discovery is done."""
        send, receive = anyio.create_memory_object_stream[HypervisorEvent](
            HYPERVISOR_STREAM_SIZE
        )
        self._events_in = receive
        # Read before any VM task can throttle a drive (holds.py: read_left).
        left = await self.throttles.read_left()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._dispatch, receive)
            tg.start_soon(self.throttles.lift_at_stop)
            await tg.start(self.ctx.hypervisor.run, send)
            tg.start_soon(self.throttles.recover, left)  # limits a previous run left
            tg.start_soon(self._poll_loop)
            log.info("monitor started", dry_run=self.ctx.dry_run)
            task_status.started()

    def reconfigure(
        self, settings: PolicySettings, policy_for: PolicyResolver | None, dry_run: bool,
        resume: ResumeSettings | None = None, *, extend_deadline_s: float | None = None,
    ) -> None:
        """Apply a reloaded config. Drive states are kept; new numbers apply from the next
        decision (thresholds are re-armed by the next poll)."""
        ctx = self.ctx
        ctx.settings = settings
        if extend_deadline_s is not None:
            ctx.extend_deadline_override = extend_deadline_s
        ctx.policy_for = MeasuredCaps(policy_for or default_policy_resolver(settings),
                                      ctx.caps)
        ctx.dry_run = dry_run
        self.rates.half_life_s = settings.rate_half_life_s
        self.rates.assumed_latency_s = settings.assumed_latency_s
        if resume is not None:
            ctx.resume = resume
        for vm in self._vms.values():
            vm.apply_resume_settings()
            vm.post(RESYNC)

    def idle(self, *, extensions: bool = True) -> bool:
        """True when the monitor has nothing left to do at the clock's current time: every
        hypervisor event is routed, every VM's inbox is handled (no VM mid-way through a
        message), no poll or timer is due, and (with ``extensions``) no extension is in
        flight. The synchronisation point for "nothing happened" in tests (with a manual
        clock it is exact); never a sleep."""
        if self._events_in is None or not _parked(self._events_in):
            return False
        now = self.ctx.clock.now()
        if now >= self._next_poll:
            return False
        if extensions and self.extends_in_flight:
            return False
        for vm in self._vms.values():
            if not _parked(vm.receive):
                return False
            if vm.timer_at is not None and vm.timer_at <= now:
                return False
            if any(at <= now for at in vm.checks_at):
                return False
        return True

    # ----------------------------------------------------------------- queries

    def snapshot(self) -> list[dict[str, Any]]:
        """What ``autoextend status`` shows: every VM and drive."""
        return [vm.snapshot() for vm in self._vms.values()]

    def volumes_in_use(self) -> list[VolumeInUse]:
        """Every managed drive's volume now (one entry per drive; a volume may repeat)."""
        return [VolumeInUse(vm.name, d.name, d.volume, d.info.allocation, d.info.physical,
                            d.info.capacity, d.cap)
                for vm in self._vms.values() for d in vm.drives.values()]

    def caps_in_use(self) -> dict[VolumeRef, int]:
        """Each managed drive's volume now, once, with its cap (the capacity watcher's look,
        twice a second: a thousand drives cost a dict, not a thousand records)."""
        return {d.volume: d.cap for vm in self._vms.values() for d in vm.drives.values()}

    def pause_claims(self) -> list[OwnPause]:
        """The ENOSPC pauses this host claims now, for its in-use record
        (``monitor/pauseclaims.py``)."""
        return self.claims.current(self._vms.values())

    def drive_error_policies(self) -> dict[str, float]:
        """How many managed drives have each write error policy ("default": unset, QEMU's
        ``enospc``); ``report`` and ``ignore`` hand an ENOSPC to the guest."""
        found: dict[str, float] = {}
        for vm in self._vms.values():
            for d in vm.drives.values():
                policy_name = d.info.error_policy or "default"
                found[policy_name] = found.get(policy_name, 0.0) + 1
        return found

    def frozen_views(self) -> dict[VolumeRef, str]:
        """Volumes whose view this host must not refresh now, each with the VM that holds it:
        a VM migrating out (its view is frozen until the migration ends)."""
        return {d.volume: vm.name for vm in self._vms.values()
                if not migration.may_refresh(vm.machine.migration)
                for d in vm.drives.values()}

    def settled(self, name: str) -> bool:
        """The VM runs here with its drives known and no migration in progress (an incoming
        one has arrived, been refreshed and armed by its VM task, and runs)."""
        vm = self._vms.get(name)
        return (vm is not None and vm.machine.migration is migration.MigState.NONE
                and vm.machine.state is VmState.RUNNING and bool(vm.drives))

    def space_added(self, vg: str) -> int:
        """The VG gained free space: every drive of it waiting to retry a failed extension
        retries now, not at its next backoff step. Returns how many drives were woken."""
        now = self.ctx.clock.now()
        woken = 0
        for vm in self._vms.values():
            hit = [d for d in vm.drives.values() if d.volume.vg == vg and d.retry_now(now)]
            if hit:
                woken += len(hit)
                vm.post(POLL)
                log.info("volume group gained space; retrying now", vm=vm.name, vg=vg,
                         drives=[d.name for d in hit])
        return woken

    # ----------------------------------------------------------------- routing

    async def _dispatch(self, receive: MemoryObjectReceiveStream[HypervisorEvent]) -> None:
        async with receive:
            async for event in receive:
                if isinstance(event, VmGone):
                    volumes = self._drop_vm(event.vm)
                    if event.clean and volumes is not None:
                        self.ctx.observer.notify(CleanStop(event.vm, tuple(volumes)))
                    continue
                vm = self._vms.get(event.vm) or self._add_vm(event.vm)
                vm.post(RESYNC if isinstance(event, VmAppeared) else event)
                if isinstance(event, VmAppeared) and self._tg is not None:
                    self.throttles.vm_connected(self._tg)

    def _add_vm(self, name: str) -> VmTask:
        assert self._tg is not None
        vm = VmTask(name, self.ctx, self._steps)
        self._vms[name] = vm
        self._tg.start_soon(vm.run, name=f"vm:{name}")
        log.info("vm added", vm=name)
        return vm

    def _drop_vm(self, name: str) -> list[VolumeRef] | None:
        """Forget a VM; the volumes of its drives, or None if it was not known."""
        vm = self._vms.pop(name, None)
        if vm is None:
            return None
        self.claims.departed(vm)
        drives = vm.close()
        for d in drives.values():
            self.ctx.observer.notify(DriveGone(name, d.name, d.volume))
        self.ctx.in_flight_changed()  # its extensions no longer count
        log.info("vm gone", vm=name)
        return sorted({d.volume for d in drives.values()})

    async def _poll_loop(self) -> None:
        ctx = self.ctx  # its settings are replaced on reload: read them at each use
        polls = 0
        while True:
            self._next_poll = ctx.clock.now() + ctx.settings.poll_interval_s
            await ctx.clock.sleep(ctx.settings.poll_interval_s)
            polls += 1
            settings = ctx.settings
            every = pollplan.full_poll_every(settings.poll_interval_s,
                                             settings.full_poll_interval_s)
            full = polls % every == 0
            for vm in list(self._vms.values()):
                if full or pollplan.needs_poll(vm):
                    vm.post(POLL)
            if full:
                await self._audit_views()
            self.polls += 1

    async def _audit_views(self) -> None:
        """The continuous view audit, once per full poll (``monitor/views.py``). A failure
        is logged; the next full poll tries again."""
        try:
            await audit(self.ctx, self._checks, list(self._vms.values()))
        except Exception as exc:  # noqa: BLE001 - the poller must go on
            log.error("view audit failed", error=repr(exc))


def _parked(stream: MemoryObjectReceiveStream[Any]) -> bool:
    """Its reader has taken everything and waits for more (an item handed straight to a
    waiting reader is not in the buffer, but that reader is no longer waiting)."""
    stats = stream.statistics()
    return stats.current_buffer_used == 0 and stats.tasks_waiting_receive > 0


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
