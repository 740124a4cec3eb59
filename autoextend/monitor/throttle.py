"""Throttle before pause: slow a guest's writes so its headroom outlasts its extension.

Derivation. An extension starts at the threshold, with the free space above it
(``rate.free_above_threshold``: ``F`` bytes) to work with. It is expected to land ``E``
seconds from now:

* ``E = p99 - elapsed + R`` while the extension is younger than the p99 of recent
  extensions (measured, ``rate.DriveRates.latency_s``);
* ``E = SLACK x failover_s + p99 - elapsed + R`` (at least :data:`MIN_REMAINING_S`) once it
  outlived the p99: something is wrong, so plan for the worst that still ends, an SPM
  failover (``timeouts.failover_s``, 8T+W+2T; in local mode the extension deadline). That
  bound is the time until a new SPM *reads* the request; the extension then takes an
  ordinary one (the p99) to land. The bound also assumes every host renews and reads on
  time, which an overloaded host does not: the plan is for :data:`FAILOVER_SLACK` times the
  bound (a guest slowed more during a failover, rather than paused at its end). While no SPM
  term is valid no extension lands sooner than that; the reason shown is then ``SPM
  failover``. The host's view of the SPM's renewals is not trusted to throttle on its own
  (a host reads the other hosts' records only now and then, so a stale view would throttle
  healthy guests); an extension stuck behind a lost SPM outlives its p99 within that p99,
  and the bound applies from then on.
* ``R`` is the throttle's reaction: one look (:data:`CHECK_S`) and one set of a limit (``A``,
  measured: the slowest of the recent sets, :data:`ACT_ASSUMED_S` before any). A limit
  decided now is in place only ``A`` later, and a limit needed at the p99 is decided up to
  one look after it: the plan includes both, so the space is not gone before the limit is.

At the drive's write rate ``r`` the free space lasts ``F / r``. When that is less than
``E`` the guest would pause, so its writes are limited to

    limit = max(floor, (F - r x A) / (E - A))

which is below ``r`` (``F / r < E`` is ``(F - rA) / (E - A) < r``): the space left when the
limit is in place, ``A`` from now, then lasts until the extension lands. Only ever tightened
while the extension runs (a guest held at ``limit`` keeps the figure where it is); lifted in
the step that re-arms the grown drive (or leaves
it at its cap, or to a migration), and then the limits the drive had before are restored
exactly: they are read first (``Hypervisor.io_limits``), a drive whose own write limit is
already at or below ``limit`` is left alone, and a drive whose limits someone changed
while it was throttled keeps theirs.

A guest paused for lack of space gets its ``cont`` before the lift (the lift is not needed
to resume it; its read and set would come between the extender's OK and the ``cont``): the
re-arm puts the lift off, and the VM's pause step lifts it right after the ``cont``
(:meth:`Throttles.after_resume`; the expiry loop after :data:`DEFER_S` at the latest).

Across a crash: each hold is written down before its limit is set and struck out when it
is lifted (``monitor/holds.py``); the next start gives back what a killed service left.

``[policy] throttle = false`` turns it off; ``throttle_floor_mib_s`` is the floor. A guest
sees slower writes (its I/O waits in QEMU), never an error.

Held between extensions (``chunk_mode = "write_rate_throttle"`` only, issue 30 item 6). A
limit set during an extension only helps when it is in place before the watermark is gone;
a guest that fills its watermark faster than the throttle can react (a few monitor
commands) pauses anyway, and in that mode the chunk stops growing at the fixed one. So at
the re-arm step such a drive keeps a limit instead of losing it (:func:`steady_limit`):

    limit = max(floor, W / (p99 x m))

with ``W`` the re-armed watermark and ``m`` the drive's margin (1 at first, corrected by
its near-miss figures like the chunk's margin, ``chunking.next_margin``): the next extension,
started at the threshold with the guest held there, lands before the watermark is gone. It
is kept while the guest needs it (its rate x p99 x m is more than ``W``, or it presses
against the limit it has) and lifted at the first re-arm where it does not, or once the
guest, held at the limit, has not reached its threshold within twice the time it would
need (:data:`STEADY_GRACE_S` more): it slowed down or stopped. The drive's own limits are
restored then, exactly as after an extension.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
from anyio.abc import TaskGroup

from autoextend.errors import AutoextendError
from autoextend.monitor import policy
from autoextend.monitor.chunking import next_margin
from autoextend.monitor.context import MonitorContext, VmView
from autoextend.monitor.drive import DriveState, ThresholdState
from autoextend.monitor.holds import HoldFile, HoldRecord, read_left, recheck, settle_left
from autoextend.monitor.observer import (
    DriveGone,
    MonitorEvent,
    Throttled,
    ThrottleLifted,
    WatermarkLeft,
)
from autoextend.monitor.protocols import DriveInfo, IoLimits
from autoextend.monitor.rate import (
    DriveRates,
    Sample,
    free_above_threshold,
    headroom_s,
    predicted_allocation,
)
from autoextend.monitor.vm import log
from autoextend.monitor.vmstate import VmState
from autoextend.volumes import VolumeRef

MiB = 1 << 20
#: The least time an extension is still expected to take, once its bound has passed.
MIN_REMAINING_S = 1.0
#: The plan during a failover is for this many times its bound (module doc).
FAILOVER_SLACK = 2.0
#: How long setting a limit is assumed to take until one was measured, and how many of the
#: recent sets the measured figure (the slowest) is taken from.
ACT_ASSUMED_S = 0.1
ACT_WINDOW = 8
#: How often the watch looks at a drive being extended (arithmetic only, no I/O).
CHECK_S = 0.1
#: How often it asks the hypervisor for fresh numbers while it throttles or is overdue.
RESAMPLE_S = 1.0
#: How long the monitor's stop waits for the throttled drives' limits to be restored.
STOP_RESTORE_S = 5.0
#: A new limit replaces the one in place only when it is this much lower.
TIGHTEN = 0.9
#: Held between extensions: a guest whose rate is at least this share of its limit presses
#: against it (it would write faster); the limit is kept.
PRESSING = 0.9
#: Held between extensions: how often the hold's expiry is looked at, and the least time a
#: held guest has to reach its threshold again.
STEADY_CHECK_S = 0.5
STEADY_GRACE_S = 1.0
#: A lift put off until the paused guest's ``cont`` (:meth:`Throttles.after_resume`) is done
#: by the expiry loop at the latest this long after the re-arm.
DEFER_S = 2.0
#: Held between extensions: the margin a drive starts with (the p99 is already a bound;
#: near misses raise it, ``chunking.next_margin``).
HOLD_MARGIN = 1.0

SPM_FAILOVER = "SPM failover"
OVERDUE = "extension overdue"
WRITE_RATE = "write rate"


@dataclass(frozen=True)
class Expectation:
    """How long until the extension lands (seconds from now), and why that long."""

    remaining_s: float
    reason: str


def expect(elapsed_s: float, p99_s: float, failover_s: float, spm_valid: bool,
           react_s: float = 0.0) -> Expectation:
    """The expected rest of an extension that has run ``elapsed_s``, with the throttle's
    reaction ``react_s`` (see module doc); ``spm_valid`` only names the reason."""
    if elapsed_s < p99_s:
        return Expectation(p99_s - elapsed_s + react_s, WRITE_RATE)
    return Expectation(max(FAILOVER_SLACK * failover_s + p99_s - elapsed_s + react_s,
                           MIN_REMAINING_S),
                       OVERDUE if spm_valid else SPM_FAILOVER)


def limit_for(free: int, rate: float, remaining_s: float, floor: int,
              act_s: float = 0.0) -> int | None:
    """The write limit (bytes/s) that makes ``free`` last ``remaining_s`` when it takes
    ``act_s`` to be in place (the guest writes at ``rate`` until then), never below
    ``floor``; None when the rate does not need one (the headroom lasts)."""
    if remaining_s <= 0 or headroom_s(free, rate) >= remaining_s:
        return None
    act_s = min(max(0.0, act_s), remaining_s / 2)  # the rest is planned for, at least half
    left = free - rate * act_s
    return max(floor, math.floor(max(0.0, left) / (remaining_s - act_s)))


def tighter(current: int, wanted: int | None) -> int | None:
    """The limit to set now: ``wanted`` when there is none yet (``current`` 0) or it is
    clearly lower; otherwise None (keep what is set)."""
    if wanted is None or wanted <= 0:
        return None
    if current == 0 or wanted < current * TIGHTEN:
        return wanted
    return None


def steady_limit(rate: float, watermark: int, latency_s: float, margin: float, floor: int,
                 current: int) -> int | None:
    """The limit to hold between extensions (see module doc), or None when the guest needs
    none: its ``rate x latency_s x margin`` fits in ``watermark`` and it does not press
    against the limit it has (``current``, 0 for none)."""
    if latency_s <= 0 or watermark <= 0:
        return None
    margin = max(1.0, margin)
    pressing = current > 0 and rate >= PRESSING * current
    if rate * latency_s * margin <= watermark and not pressing:
        return None
    limit = math.floor(watermark / (latency_s * margin))
    while limit > 0 and limit * latency_s * margin > watermark:
        limit -= 1  # the division rounded up (a step at most): the limit must fit
    return max(floor, limit)


def hold_expiry(now: float, room: int, limit: int) -> float:
    """When a hold ends if the guest does not reach its threshold first: twice the time
    the ``room`` up to the end of the volume lasts at the limit, plus STEADY_GRACE_S."""
    return now + 2.0 * max(0, room) / max(1, limit) + STEADY_GRACE_S


def describe(bps: int, reason: str) -> str:
    """``THROTTLED 12 MiB/s (SPM failover)``, as ``status`` shows it."""
    return f"THROTTLED {bps // MiB} MiB/s ({reason})" if bps >= MiB else \
        f"THROTTLED {bps // 1024} KiB/s ({reason})"


@dataclass
class Held:
    """One drive autoextend throttles: what it had, what it got, since when and why."""

    vm: str
    drive: str
    original: IoLimits
    applied: IoLimits
    bps: int
    reason: str
    since: float
    #: Held between extensions (module doc): when the hold ends unless renewed; None while
    #: it belongs to an extension.
    expires: float | None = None


class Throttles:
    """The monitor's write throttle: one per monitor (``monitor/vmtask.py: Steps``)."""

    def __init__(self, ctx: MonitorContext, rates: DriveRates,
                 holds: HoldFile | None = None) -> None:
        self._ctx = ctx
        self.rates = rates
        #: What is written down across a crash (``monitor/holds.py``).
        self.holds = holds if holds is not None else HoldFile(None)
        self.held: dict[VolumeRef, Held] = {}
        self._seconds_done = 0.0
        self._watched: set[VolumeRef] = set()  # drives whose extension is running
        # Drives whose extension answered while their watch ran: a limit not sent yet is
        # not sent (it would only be lifted at the re-arm, and would delay the cont).
        self._answered: set[VolumeRef] = set()
        #: Holds being ended: a watch must not read their limits as the drive's own yet.
        self._restoring: set[VolumeRef] = set()
        self._wake: anyio.Event | None = None  # set when a hold starts (lift_at_stop waits)
        #: Held between extensions: each drive's margin, corrected by its near misses.
        self.margins: dict[VolumeRef, float] = {}
        #: Lifts put off until the VM's resume was sent (:meth:`after_resume`).
        self._deferred: dict[VolumeRef, tuple[VmView, DriveState, DriveInfo]] = {}
        #: How long the recent sets of a limit took (read the drive's own, set): ``A``.
        self._acts: deque[float] = deque(maxlen=ACT_WINDOW)

    # ------------------------------------------------------------ what others read

    def seconds_total(self) -> float:
        """``autoextend_throttled_seconds_total``: drive-seconds spent throttled."""
        now = self._ctx.clock.now()
        return self._seconds_done + sum(now - h.since for h in self.held.values())

    def status(self, volume: VolumeRef) -> str:
        h = self.held.get(volume)
        return describe(h.bps, h.reason) if h is not None else ""

    def _holds(self) -> bool:
        """Held between extensions: only with ``chunk_mode = "write_rate_throttle"``."""
        return self._ctx.settings.chunk_mode == "write_rate_throttle"

    def notify(self, event: MonitorEvent) -> None:
        """A drive gone (with its VM or unplugged): nothing left to restore."""
        if isinstance(event, DriveGone):
            self.margins.pop(event.volume, None)
            self._deferred.pop(event.volume, None)
            h = self.held.pop(event.volume, None)
            if h is not None:
                self._seconds_done += self._ctx.clock.now() - h.since
                self.holds.forget(h.vm, h.drive)  # written with the next change

    async def read_left(self) -> list[HoldRecord]:
        """At start-up, before any drive can be throttled: the records of the limits a
        previous run left (``monitor/holds.py: read_left``)."""
        return await read_left(self.holds)

    async def recover(self, left: list[HoldRecord]) -> None:
        """At start-up: give back the limits a previous run left (``left``, from
        :meth:`read_left`)."""
        await settle_left(self.holds, self._ctx.hypervisor, left, self._ctx.dry_run)

    def vm_connected(self, tg: TaskGroup) -> None:
        """A VM connected: records start-up kept for a VM it could not find yet are looked
        at again (``holds.recheck``), in ``tg``."""
        if self.holds.unsettled:
            tg.start_soon(recheck, self.holds, self._ctx.hypervisor, self._ctx.dry_run)

    # ------------------------------------------------------------ during an extension

    def _enabled(self, info: DriveInfo) -> bool:
        return self._ctx.settings.throttle and not info.job and not self._ctx.dry_run

    @contextlib.asynccontextmanager
    async def watching(self, vm: VmView, d: DriveState, info: DriveInfo,
                       pol: policy.DrivePolicy, started: float) -> AsyncIterator[None]:
        """Watch the drive while its extension runs (the body): throttle it when its
        headroom will not last until the extension lands."""
        if not self._enabled(info):
            yield
            return
        watermark = policy.watermark(pol)
        self.rates.sample(d.volume, self._ctx.clock.now(), info.allocation, info.physical,
                          watermark)
        held = self.held.get(d.volume)
        if held is not None:
            held.expires = None  # the extension's now: its re-arm decides again
        self._deferred.pop(d.volume, None)
        self._watched.add(d.volume)
        self._answered.discard(d.volume)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._watch, vm, d, info, watermark, started)
                try:
                    yield
                finally:
                    self._answered.add(d.volume)
                    tg.cancel_scope.cancel()
        finally:
            self._watched.discard(d.volume)
            self._answered.discard(d.volume)

    async def _watch(self, vm: VmView, d: DriveState, info: DriveInfo, watermark: int,
                     started: float) -> None:
        """The watch, contained: a failure here must never end the extension it watches."""
        try:
            await self._watching(vm, d, info, watermark, started)
        except Exception as exc:  # noqa: BLE001 - the extension goes on without a throttle
            log.error("throttle watch failed", vm=vm.name, drive=d.name, error=repr(exc))

    async def _watching(self, vm: VmView, d: DriveState, info: DriveInfo, watermark: int,
                        started: float) -> None:
        ctx = self._ctx
        # The extension's own sample (``watching``) is fresh: the first look acts on it at
        # once, with no query first (every command before the set is space gone).
        resampled = ctx.clock.now()
        while True:
            now = ctx.clock.now()
            exp = self._expect(now - started)
            if exp.reason != WRITE_RATE:
                self.rates.overdue.add(d.volume)
            s = self.rates.last(d.volume) or Sample(now, info.allocation)
            wanted = self._wanted(d, s, now, info.physical, watermark, exp)
            if (wanted is not None or exp.reason != WRITE_RATE) and now - resampled >= RESAMPLE_S:
                resampled = now
                s = await self._resample(vm, d, info, watermark)
                wanted = self._wanted(d, s, ctx.clock.now(), info.physical, watermark, exp)
            # A guest paused for lack of space writes nothing, and its cont follows the
            # landing that lifts the limit: a limit set now would only delay that cont.
            if wanted is not None and vm.machine.state is not VmState.PAUSED_ENOSPC:
                await self._apply(vm, d, info, wanted, exp.reason)
            await ctx.clock.sleep(CHECK_S)

    def act_s(self) -> float:
        """``A``: how long setting a limit takes (the slowest of the recent sets)."""
        return max(self._acts) if self._acts else ACT_ASSUMED_S

    def _expect(self, elapsed: float) -> Expectation:
        ctx = self._ctx
        spm_ok = ctx.spm_ok() if ctx.spm_ok is not None else True
        bound = ctx.failover_s if ctx.failover_s is not None else ctx.extend_deadline_s
        return expect(elapsed, self.rates.latency_s(), bound, spm_ok, CHECK_S + self.act_s())

    def _wanted(self, d: DriveState, s: Sample, now: float, physical: int, watermark: int,
                exp: Expectation) -> int | None:
        held = self.held.get(d.volume)
        current = held.bps if held is not None else 0
        rate = min(s.rate, current) if current else s.rate
        allocation = max(self.rates.latest(d.volume), predicted_allocation(s, now, rate))
        free = free_above_threshold(allocation, physical, watermark)
        floor = self._ctx.settings.throttle_floor_mib_s * MiB
        return tighter(current, limit_for(free, rate, exp.remaining_s, floor, self.act_s()))

    async def _resample(self, vm: VmView, d: DriveState, info: DriveInfo,
                        watermark: int) -> Sample:
        """Fresh numbers from the hypervisor (one drive query), as one more sample."""
        try:
            fresh = await self._ctx.hypervisor.drives(vm.name)
        except AutoextendError as exc:
            log.debug("throttle: drive query failed", vm=vm.name, drive=d.name, error=str(exc))
            fresh = []
        for f in fresh:
            if f.drive == d.name and f.path == info.path:
                return self.rates.sample(d.volume, self._ctx.clock.now(), f.allocation,
                                         info.physical, watermark)
        return self.rates.last(d.volume) or Sample(self._ctx.clock.now(), info.allocation)

    async def _apply(self, vm: VmView, d: DriveState, info: DriveInfo, bps: int,
                     reason: str, holding: bool = False) -> None:
        """Set the drive's write limit to ``bps`` (read its own limits first, once)."""
        ctx = self._ctx
        hv = ctx.hypervisor
        bound = log.bind(vm=vm.name, drive=d.name, volume=str(d.volume))
        held = self.held.get(d.volume)
        if d.volume in self._restoring or self.holds.busy == (vm.name, d.name):
            return  # its own limits are on their way back: the next look sets this one
        try:
            began = ctx.clock.now()
            original = held.original if held is not None else self.holds.adopt(
                vm.name, d.name, await hv.io_limits(vm.name, info))
            own = original.write_bps
            if held is None and own and own <= bps:
                return  # its own limit is tighter already: nothing to add
            # Shielded from the set to the record: the extension may land meanwhile and
            # end this watch, and a limit set but not recorded would never be lifted.
            with anyio.CancelScope(shield=True):
                sent = original.with_write_bps(bps)
                await self._write_down(vm, d, original, sent)  # before the set: a crash
                if not holding and d.volume in self._answered:
                    # The extension answered while the record was written: no set.
                    await self._unsent(vm, d, original, held)
                    return
                try:
                    await hv.set_io_limits(vm.name, info, sent)
                except AutoextendError:
                    await self._unsent(vm, d, original, held)
                    raise
                self._acts.append(ctx.clock.now() - began)
                await self._record(vm, d, info, original, sent, bps, reason,
                                   unread=not holding and d.volume in self._answered)
        except AutoextendError as exc:
            bound.warning("throttle: setting the write limit failed", error=str(exc),
                          limit_bps=bps)
            return
        ctx.observer.notify(Throttled(vm.name, d.name, d.volume, bps, reason))
        if holding:  # at every re-arm of a fast guest: not a warning each time
            bound.info("guest writes held at a limit between extensions",
                       limit_mib_s=round(bps / MiB, 2), status=describe(bps, reason))
            return
        # A limit for an extension on time (its p99) is the ordinary case of a guest faster
        # than its watermark covers: counted, shown, logged at info. An overdue extension
        # (a failover, slow storage) is what an operator must hear of.
        level = bound.info if reason == WRITE_RATE else bound.warning
        level("guest writes throttled until the extension lands",
              limit_mib_s=round(bps / MiB, 2), reason=reason, status=describe(bps, reason))

    async def _record(self, vm: VmView, d: DriveState, info: DriveInfo, original: IoLimits,
                      sent: IoLimits, bps: int, reason: str, *, unread: bool) -> None:
        """A limit set: keep it as the hypervisor has it (QEMU names a new throttle group
        after the device), which the lift compares with to see whether someone changed the
        limits. ``unread``: the extension answered as it was set, and the lift follows at
        once; its read-back would only delay the re-arm and the ``cont`` (issue 30's
        resume windows), so the lift reads instead (``IoLimits.matches``)."""
        applied = sent if unread else await self._applied(vm, info, sent)
        if applied != sent:
            await self._write_down(vm, d, original, applied)
        held = self.held.get(d.volume)
        if held is None:
            self.held[d.volume] = Held(vm.name, d.name, original, applied, bps, reason,
                                       self._ctx.clock.now())
        else:
            held.applied, held.bps, held.reason = applied, bps, reason

    async def _unsent(self, vm: VmView, d: DriveState, original: IoLimits,
                      held: Held | None) -> None:
        """A limit written down was not set: the record says again what the drive has."""
        if held is None:  # nothing set: nothing to give back
            await self.holds.drop(vm.name, d.name)
        else:  # the limit in place stays what the record says
            await self._write_down(vm, d, original, held.applied)

    async def _write_down(self, vm: VmView, d: DriveState, original: IoLimits,
                          applied: IoLimits) -> None:
        await self.holds.put(HoldRecord(vm.name, d.name, str(d.volume), original, applied))

    async def _applied(self, vm: VmView, info: DriveInfo, sent: IoLimits) -> IoLimits:
        """The limits the drive has after a set (read back); what was sent when the read
        fails (the set went through: it must still be recorded, to be lifted)."""
        try:
            return await self._ctx.hypervisor.io_limits(vm.name, info)
        except AutoextendError as exc:
            log.debug("throttle: reading the limits back failed", vm=vm.name,
                      drive=info.drive, error=str(exc))
            return sent

    # ------------------------------------------------------------ after an extension

    def landed(self, vm: VmView, d: DriveState, before: DriveInfo,
               pol: policy.DrivePolicy) -> None:
        """The extension landed: report how much of the watermark was left then (the
        near-miss figure: 0 is a pause, or as good as one). The allocation at landing is
        predicted from the last sample and the rate (no query on this path)."""
        ctx = self._ctx
        watermark = policy.watermark(pol)
        s = self.rates.last(d.volume)
        now = ctx.clock.now()
        if d.enospc or s is None:
            allocation = before.physical if d.enospc else before.allocation
        else:
            held = self.held.get(d.volume)
            rate = min(s.rate, held.bps) if held is not None else s.rate
            allocation = max(before.allocation, self.rates.latest(d.volume),
                             predicted_allocation(s, now, rate))
        left = free_above_threshold(allocation, before.physical, watermark)
        if self._holds():
            self.margins[d.volume] = next_margin(self.margins.get(d.volume, HOLD_MARGIN),
                                                 left / watermark, HOLD_MARGIN)
        ctx.observer.notify(WatermarkLeft(vm.name, d.name, d.volume, left / watermark))

    async def lift_at_stop(self) -> None:
        """Wait until the monitor stops, then give every throttled drive its own limits
        back (best effort, bounded: the hypervisor's connections close at the same time; a
        limit not given back, or left by a crash, stays in the hold file and the next start
        gives it back: ``monitor/holds.py``)."""
        try:
            while True:  # and end the holds whose guest slowed down (module doc)
                if not any(h.expires is not None for h in self.held.values()):
                    self._wake = anyio.Event()  # no timer while nothing is held
                    await self._wake.wait()
                await self._ctx.clock.sleep(STEADY_CHECK_S)
                try:
                    await self._expire()
                except Exception as exc:  # noqa: BLE001 - never the monitor's end
                    log.error("throttle: ending a hold failed", error=repr(exc))
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(STOP_RESTORE_S):
                for volume, held in list(self.held.items()):
                    self.held.pop(volume, None)
                    await self._restore(held, volume)

    async def _expire(self) -> None:
        """Lift the holds between extensions that ran out (never one whose drive is being
        extended: its watch owns the limit until the re-arm)."""
        now = self._ctx.clock.now()
        for volume, held in list(self.held.items()):
            if held.expires is None or now < held.expires or volume in self._watched:
                continue
            self.held.pop(volume, None)
            deferred = self._deferred.pop(volume, None) is not None
            seconds = now - held.since
            self._seconds_done += seconds
            self._restoring.add(volume)
            try:
                await self._restore(held, volume, "throttle lifted" if deferred else
                                    "throttle lifted: the guest slowed down")
            finally:
                self._restoring.discard(volume)
            self._ctx.observer.notify(ThrottleLifted(held.vm, held.drive, volume, seconds))

    async def _hold(self, vm: VmView, d: DriveState, info: DriveInfo) -> bool:
        """Held between extensions: keep (or set) the drive's limit at the re-arm. True
        when the drive is held now."""
        if not (self._holds() and self._enabled(info)) or d.state is not ThresholdState.SET:
            return False
        threshold = d.info.threshold
        if threshold <= 0 or threshold >= info.physical:
            return False
        ctx = self._ctx
        held = self.held.get(d.volume)
        s = self.rates.last(d.volume)
        rate = s.rate if s is not None else 0.0
        watermark = info.physical - threshold
        limit = steady_limit(rate, watermark, self.rates.latency_s(),
                             self.margins.get(d.volume, HOLD_MARGIN),
                             ctx.settings.throttle_floor_mib_s * MiB,
                             held.bps if held is not None else 0)
        if limit is None:
            return False
        if held is not None:
            try:
                now = await ctx.hypervisor.io_limits(vm.name, info)
            except AutoextendError:
                return False  # the lift reads again, and says what failed
            if not now.matches(held.applied):
                return False  # someone changed them: the lift leaves theirs
            if abs(limit - held.bps) < (1 - TIGHTEN) * held.bps:
                self._renew(held, hold_expiry(ctx.clock.now(), info.physical -
                                              self.rates.latest(d.volume), held.bps))
                return True  # about the same: keep it as it is
        await self._apply(vm, d, info, limit, WRITE_RATE, holding=True)
        held = self.held.get(d.volume)
        if held is None or held.bps != limit:
            return False  # not set (its own limit is tighter, or the set failed)
        self._renew(held, hold_expiry(ctx.clock.now(), info.physical -
                                      self.rates.latest(d.volume), limit))
        return True

    def _renew(self, held: Held, expires: float) -> None:
        held.expires = expires
        if self._wake is not None:
            self._wake.set()

    async def _restore(self, held: Held, volume: VolumeRef,
                       done: str = "throttle lifted at stop") -> None:
        """Set ``held.original`` again unless someone changed the limits meanwhile."""
        bound = log.bind(vm=held.vm, drive=held.drive, volume=str(volume))
        hv = self._ctx.hypervisor
        try:
            info = next((i for i in await hv.drives(held.vm) if i.drive == held.drive), None)
            if info is not None:
                now = await hv.io_limits(held.vm, info)
                if not now.matches(held.applied):
                    bound.warning("throttle: the drive's limits were changed while "
                                  "throttled; leaving them as they are",
                                  limits=dict(now.values))
                else:
                    await hv.set_io_limits(held.vm, info, held.original)
                    bound.info(done)
        except AutoextendError as exc:
            self._left(held, volume, exc)
            return
        await self.holds.drop(held.vm, held.drive)

    def _left(self, held: Held, volume: VolumeRef, exc: AutoextendError) -> None:
        """A lift failed: the record stays (the next start gives the limits back; a new
        hold of the drive meanwhile takes its own limits from it)."""
        self.holds.unsettled.add((held.vm, held.drive))
        log.warning("throttle: restoring the drive's limits failed; kept in the hold file",
                    vm=held.vm, drive=held.drive, volume=str(volume), error=str(exc),
                    limits=dict(held.original.values))

    async def lift(self, vm: VmView, d: DriveState, info: DriveInfo) -> None:
        """Restore the drive's own limits (the step that re-arms it), or, held between
        extensions, keep a limit (module doc). A guest paused for lack of space gets its
        ``cont`` first (the lift is not needed to resume it, and its read and set would
        delay it): the lift then follows the resume (:meth:`after_resume`). Never raises."""
        if await self._hold(vm, d, info):
            return
        held = self.held.get(d.volume)
        if held is None:
            return
        if not self._holds() and vm.machine.state is VmState.PAUSED_ENOSPC:
            self._deferred[d.volume] = (vm, d, info)
            self._renew(held, self._ctx.clock.now() + DEFER_S)  # at the latest
            return
        await self._lift_now(vm, d, info)

    async def after_resume(self, vm: VmView) -> None:
        """The VM's pause step is done (its ``cont`` sent, or not due): the lifts put off
        for it now. Never raises."""
        for volume, (v, d, info) in list(self._deferred.items()):
            if v is vm:
                del self._deferred[volume]
                await self._lift_now(v, d, info)

    async def _lift_now(self, vm: VmView, d: DriveState, info: DriveInfo) -> None:
        held = self.held.pop(d.volume, None)
        if held is None:
            return
        ctx = self._ctx
        seconds = ctx.clock.now() - held.since
        self._seconds_done += seconds
        bound = log.bind(vm=vm.name, drive=d.name, volume=str(d.volume))
        try:
            now = await ctx.hypervisor.io_limits(vm.name, info)
            if not now.matches(held.applied):
                bound.warning("throttle: the drive's limits were changed while throttled; "
                              "leaving them as they are", limits=dict(now.values))
            else:
                await ctx.hypervisor.set_io_limits(vm.name, info, held.original)
            await self.holds.drop(vm.name, d.name)
        except AutoextendError as exc:
            self._left(held, d.volume, exc)
        ctx.observer.notify(ThrottleLifted(vm.name, d.name, d.volume, seconds))
        bound.info("throttle lifted", duration_s=round(seconds, 3))
