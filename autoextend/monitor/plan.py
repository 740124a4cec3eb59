"""What one drive needs: pure decisions over its numbers, its state and the gates.

Two questions are asked of a drive, and each has one pure function here (no I/O, no
clock: the time and every gate come in as arguments):

* :func:`look` -- a look at the VM (connect, poll, event) decides what the drive needs now:
  nothing, to wait for its retry time, an extension, to be disabled at its cap, or a
  threshold armed (again). The VM's task carries it out.
* :func:`plan` -- the extension task, with the freshest numbers, decides what this
  extension does: extend to a target, disable the drive (nothing more can be added), find
  it not needed after all (a stale event; re-arm), or hold it back (the VG's level, or a
  dry run). The extension task carries it out.

The rules (``policy.py`` has the formulas and their derivation):

* A drive is *full* when less than its watermark is free, when it ran out of space
  (``enospc``), or when it is a block job's target smaller than its job needs
  (``job_need``, ``jobpolicy.py``).
* The target is one chunk more (``policy.next_size``), or the job's need when larger; a
  target not above the current size means the drive is at its cap.
* The space gate is asked only for an extension that is otherwise due (it answers why the
  VG's level holds it back, or None).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from autoextend.monitor import policy
from autoextend.monitor.drive import DriveState, ThresholdState
from autoextend.monitor.protocols import DriveInfo

# ---- what a look decides -------------------------------------------------------------------


@dataclass(frozen=True)
class Idle:
    """Nothing to do now. ``warn``: why the drive cannot be handled (log it);
    ``reenable``: a disabled drive grew below its cap: back to UNSET, but do not arm yet."""

    warn: str = ""
    reenable: bool = False


@dataclass(frozen=True)
class Wait:
    """A failed extension waits for its retry time ``at``."""

    at: float


@dataclass(frozen=True)
class Arm:
    """Arm the threshold at ``threshold`` (not armed, lost, or moved). ``reenable``: the
    drive was disabled at its cap and may grow again: back to UNSET first."""

    threshold: int
    reenable: bool = False


@dataclass(frozen=True)
class Disable:
    """The drive is at its cap: no extension can add space."""


# ---- what an extension decides (also Disable) ----------------------------------------------


@dataclass(frozen=True)
class Extend:
    """Extend (from :func:`look`: start the extension task; ``target`` is 0 and
    :func:`plan` decides it with fresh numbers)."""

    target: int = 0


@dataclass(frozen=True)
class NotNeeded:
    """A stale event, or someone else extended the drive already: re-arm at ``threshold``."""

    threshold: int


@dataclass(frozen=True)
class Hold:
    """An extension to ``target`` that is due, held back: by the VG's level (``reason``
    says why), or by a dry run (``dry_run``)."""

    reason: str
    target: int
    dry_run: bool = False


LookDecision = Idle | Wait | Extend | Disable | Arm
ExtendDecision = Extend | Disable | NotNeeded | Hold


@dataclass(frozen=True)
class LookGates:
    """What a look depends on besides the drive: the time, the VM's migration (may it arm
    at all; is the drive's view frozen at a size it was extended to) and a job's need."""

    now: float
    may_arm: bool = True
    frozen: bool = False
    job_need: int = 0


def _no_hold() -> str | None:
    return None


@dataclass(frozen=True)
class Gates:
    """What an extension depends on besides the drive: a job's need, the dry run, and the
    VG's space gate (asked only for an extension that is otherwise due)."""

    job_need: int = 0
    dry_run: bool = False
    space: Callable[[], str | None] = _no_hold


def full(info: DriveInfo, enospc: bool, pol: policy.DrivePolicy, job_need: int) -> bool:
    """The drive needs room: under its watermark, out of space, or short of its job's need."""
    return (policy.needs_extension(info.allocation, info.physical, pol) or enospc
            or job_need > info.physical)


def look(info: DriveInfo, d: DriveState, pol: policy.DrivePolicy, gates: LookGates
         ) -> LookDecision:
    """What a drive not being extended needs, from ``info`` (its numbers as policy must see
    them, see ``migrating.effective``)."""
    if not gates.may_arm:
        return Idle()  # incoming (the guest runs elsewhere yet) or departed
    if info.capacity <= 0:
        return Idle(warn="drive reports no capacity; not extending")
    if d.state is ThresholdState.EXCEEDED:
        return Extend() if gates.now >= d.retry_at else Wait(d.retry_at)
    if policy.at_cap(info.physical, info.capacity, pol):
        return Idle() if d.state is ThresholdState.DISABLED else Disable()
    if full(info, d.enospc, pol, gates.job_need):
        return Extend()
    reenable = d.state is ThresholdState.DISABLED
    if gates.frozen:
        return Idle(reenable=reenable)  # extended while migrating out: the view did not grow
    wanted = policy.threshold(info.physical, pol)
    lost = d.state is ThresholdState.SET and (info.threshold == 0 or d.threshold != wanted)
    if d.state is ThresholdState.UNSET or lost or reenable:
        return Arm(wanted, reenable)
    return Idle()


def plan(info: DriveInfo, d: DriveState, pol: policy.DrivePolicy, gates: Gates
         ) -> ExtendDecision:
    """What one extension of the drive does, from its freshest numbers ``info``."""
    target = max(policy.next_size(info.physical, info.capacity, pol), gates.job_need)
    if target <= info.physical:
        return Disable()
    if not full(info, d.enospc, pol, gates.job_need):
        return NotNeeded(policy.threshold(info.physical, pol))
    held = gates.space()
    if held is not None:
        return Hold(held, target)
    if gates.dry_run:
        return Hold("dry-run", target, dry_run=True)
    return Extend(target)


# ---- a bound on growth per event -----------------------------------------------------------


def plausible(info: DriveInfo, pol: policy.DrivePolicy) -> bool:
    """An allocation a real drive can report: writes past the end fail, so the highest
    written offset cannot lie more than a chunk past the device's size."""
    return 0 <= info.allocation <= info.physical + pol.chunk


def agree(first: DriveInfo, second: DriveInfo, pol: policy.DrivePolicy) -> bool:
    """Two fresh samples of one drive (``second`` taken after ``first``) agree that it
    needs more room: both plausible, both under the watermark at the size they saw, and
    the allocation did not go back (a spike that vanishes is no agreement)."""
    return (plausible(first, pol) and plausible(second, pol)
            and policy.needs_extension(first.allocation, first.physical, pol)
            and policy.needs_extension(second.allocation, second.physical, pol)
            and second.allocation >= first.allocation)


def within_bound(base: int, physical: int, pol: policy.DrivePolicy, max_chunks: int) -> bool:
    """True while the growth since the event (``physical - base``) is below ``max_chunks``
    chunks: one more extension may follow without two agreeing samples."""
    return physical - base < max_chunks * pol.chunk
