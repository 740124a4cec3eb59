"""One VM's pause state machine: the states, the events, and a pure step between them.

This module is the only place that says what a VM's state may become and what the monitor
does about it. :class:`VmMachine` is its only owner at run time; ``step`` is pure and is
tested over every (state, event) pair.

States::

    RUNNING ──enospc──────────▶ PAUSED_ENOSPC ──room──▶ (RESUME) ──running──▶ RUNNING
       │    ──enospc_unmanaged▶ PAUSED_ENOSPC_UNMANAGED   (never resumed by autoextend)
       │    ──io_error────────▶ PAUSED_IO_ERROR ──storage_ok──▶ (RESUME, policy auto|kill)
       │                                        ──kill_due────▶ (KILL, policy kill)
       │    ──other_pause─────▶ PAUSED_OTHER    (operator, migration, unknown: never resumed)
       └── any state ──gone──▶ GONE (absorbing)

Orthogonal to these, ``VmMachine.migration`` holds the VM's live-migration state (NONE,
MIGRATING_OUT, INCOMING, DEPARTED; pure ``step`` in ``monitor/migration.py``): while it is
not NONE, no resume is sent from this host (``migration.may_resume``).

* autoextend resumes only what it caused (ENOSPC on drives it manages, once they have room)
  and, by ``[resume] policy``, pauses for I/O errors once storage answers again.
* An ENOSPC pause that involves a drive autoextend does not manage is sticky: it stays
  PAUSED_ENOSPC_UNMANAGED until the VM is seen running again (someone else resumed it),
  whatever later classifications say (growing the drive by hand does not make it ours).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from autoextend.backoff import backoff
from autoextend.monitor.arrival import Arrival
from autoextend.monitor.migration import MigState
from autoextend.monitor.protocols import DriveIoError, PauseReason
from autoextend.volumes import VolumeRef


class VmState(enum.Enum):
    RUNNING = "running"
    PAUSED_ENOSPC = "paused-enospc"
    PAUSED_ENOSPC_UNMANAGED = "paused-enospc-unmanaged"
    PAUSED_IO_ERROR = "paused-io-error"
    PAUSED_OTHER = "paused-other"  # operator, migration or unknown
    GONE = "gone"


class VmEvent(enum.Enum):
    RUNNING = "running"                    # the hypervisor says the VM runs
    ENOSPC = "enospc"                      # paused, ENOSPC on managed drives only
    ENOSPC_UNMANAGED = "enospc-unmanaged"  # paused, ENOSPC involving an unmanaged drive
    IO_ERROR = "io-error"                  # paused by another I/O error
    OTHER_PAUSE = "other-pause"            # paused by an operator, for migration, unknown
    ROOM = "room"                          # every managed drive that paused it has room
    STORAGE_OK = "storage-ok"              # probe ok twice, lease valid, backoff step due
    KILL_DUE = "kill-due"                  # paused on I/O error for longer than kill_after_s
    GONE = "gone"


class Action(enum.Enum):
    RESUME = "resume"
    KILL = "kill"
    WARN_UNMANAGED = "warn-unmanaged"  # one warning + counter, on entering the state
    NOTE_PAUSED = "note-paused"        # report the pause (metrics, log), on a state change
    NOTE_RUNNING = "note-running"      # report that a paused VM runs again


class ResumePolicy(enum.Enum):
    AUTO = "auto"    # resume once storage answers again (probe ok twice)
    LEAVE = "leave"  # leave paused; an operator decides
    KILL = "kill"    # like auto, but kill the VM once paused for longer than kill_after_s


PAUSED = frozenset({
    VmState.PAUSED_ENOSPC, VmState.PAUSED_ENOSPC_UNMANAGED, VmState.PAUSED_IO_ERROR,
    VmState.PAUSED_OTHER,
})

_PAUSE_TARGET = {
    VmEvent.ENOSPC: VmState.PAUSED_ENOSPC,
    VmEvent.ENOSPC_UNMANAGED: VmState.PAUSED_ENOSPC_UNMANAGED,
    VmEvent.IO_ERROR: VmState.PAUSED_IO_ERROR,
    VmEvent.OTHER_PAUSE: VmState.PAUSED_OTHER,
}


@dataclass(frozen=True)
class Step:
    state: VmState
    actions: tuple[Action, ...] = ()


def step(state: VmState, event: VmEvent, policy: ResumePolicy) -> Step:
    """What the VM becomes and what to do, for one event. Pure; total over its inputs."""
    if state is VmState.GONE or event is VmEvent.GONE:
        return Step(VmState.GONE)
    if event is VmEvent.RUNNING:
        return Step(VmState.RUNNING, (Action.NOTE_RUNNING,) if state in PAUSED else ())
    target = _PAUSE_TARGET.get(event)
    if target is not None:
        if state is VmState.PAUSED_ENOSPC_UNMANAGED:
            return Step(state)  # sticky until the VM runs again
        if target is state:
            return Step(state)
        actions = [Action.NOTE_PAUSED]
        if target is VmState.PAUSED_ENOSPC_UNMANAGED:
            actions.append(Action.WARN_UNMANAGED)
        return Step(target, tuple(actions))
    if event is VmEvent.ROOM:
        return Step(state, (Action.RESUME,) if state is VmState.PAUSED_ENOSPC else ())
    if event is VmEvent.STORAGE_OK:
        resume = state is VmState.PAUSED_IO_ERROR and policy is not ResumePolicy.LEAVE
        return Step(state, (Action.RESUME,) if resume else ())
    if event is VmEvent.KILL_DUE:
        kill = state is VmState.PAUSED_IO_ERROR and policy is ResumePolicy.KILL
        return Step(state, (Action.KILL,) if kill else ())
    raise AssertionError(f"unhandled event {event}")  # pragma: no cover (enum is closed)


def classify(
    running: bool,
    reason: PauseReason | None,
    errors: tuple[DriveIoError, ...],
    managed: frozenset[str],
) -> VmEvent:
    """The event a fresh look at the VM amounts to.

    ``errors`` are the drives the hypervisor reports in error (managed or not); ``managed``
    names the drives autoextend extends. An ENOSPC on any drive outside ``managed`` makes the
    pause unmanaged, also when other (managed) drives ran out of space with it.
    """
    if running:
        return VmEvent.RUNNING
    if any(e.nospace and e.drive not in managed for e in errors):
        return VmEvent.ENOSPC_UNMANAGED
    if reason is PauseReason.ENOSPC:
        return VmEvent.ENOSPC
    if reason is PauseReason.IO_ERROR:
        return VmEvent.IO_ERROR
    return VmEvent.OTHER_PAUSE


def describe(state: VmState, unmanaged: tuple[str, ...] = ()) -> str | None:
    """The ``paused`` text of ``autoextend status``: None when running."""
    if state is VmState.RUNNING:
        return None
    if state is VmState.PAUSED_ENOSPC_UNMANAGED:
        return "enospc, unmanaged " + ",".join(unmanaged) if unmanaged else "enospc, unmanaged"
    return {
        VmState.PAUSED_ENOSPC: "enospc",
        VmState.PAUSED_IO_ERROR: "io-error",
        VmState.PAUSED_OTHER: "other",
        VmState.GONE: "gone",
    }[state]


@dataclass
class VmMachine:
    """The one owner of a VM's state. Changes only through :meth:`apply`."""

    policy: ResumePolicy = ResumePolicy.AUTO
    kill_after_s: float = 80.0
    state: VmState = VmState.RUNNING
    pause_reason: PauseReason | None = None  # the hypervisor's own word, for status
    unmanaged: tuple[str, ...] = ()          # drives that made it PAUSED_ENOSPC_UNMANAGED
    paused_at: float | None = None
    resume_attempts: int = 0
    last_resume_at: float | None = None
    probe_ok_in_a_row: int = 0
    first_ok_at: float | None = None
    expect_resume: bool = False
    # A cont autoextend sent whose RESUME this task has not handled yet. The hypervisor
    # sends the RESUME a cont causes after every event from before it, so a pause or an
    # ENOSPC message handled meanwhile is from before the cont: what it carries (QMP's STOP
    # comes with the run state read for it) is stale, and only a fresh look may decide.
    cont_unconfirmed: bool = False
    errors: tuple[DriveIoError, ...] = ()     # the drives in error at the last look
    last_action: str = ""                   # what autoextend last did, and why (status)
    # Managed drives that ran out of space since the VM last ran: an ENOSPC pause is
    # autoextend's to end only if this is not empty.
    full_drives: set[str] = field(default_factory=set)
    killed: bool = False  # a kill was sent during this pause
    # Live migration (an orthogonal region of this machine; rules in monitor/migration.py):
    # migrating-out, incoming, departed. ``migration_stale``: ask the hypervisor at the next
    # look. ``deferred_sizes``: per drive, the size its volume was extended to while this
    # host's view is frozen (migrating out): extended in metadata, not yet visible here.
    migration: MigState = MigState.NONE
    migration_stale: bool = True
    deferred_sizes: dict[str, int] = field(default_factory=dict)
    # ``incoming_sizes``: per volume, the size this host's view was refreshed to while the
    # VM's migration here was incoming (the last such refresh; ``migration.short_activation``).
    incoming_sizes: dict[VolumeRef, int] = field(default_factory=dict)
    # The view check (``monitor/views.py``): ``views_checked``, the check at the VM's
    # appearance has run (or had nothing to do: an incoming migration). ``stale_views``:
    # per drive, why autoextend paused the guest for a stale view. While it holds anything
    # the VM is never resumed automatically, whatever else its state says (only an operator
    # can tell what the guest did with what it read); it clears when the VM is seen running
    # again (someone resumed it).
    views_checked: bool = False
    stale_views: dict[str, str] = field(default_factory=dict)
    # ENOSPC on a drive with room (``monitor/backing.py``). ``enospc_events``: drives a
    # hypervisor event named since the VM last ran (a backend may name none in its run
    # state). ``resumed_on``: per drive armed then, its (physical, threshold) at the last
    # resume autoextend sent. ``room_drives``: drives that paused the VM with room (never
    # extended for it) since it last ran. ``backing_full``: drives shown to be on a full
    # backing store; it lasts until the VM has run for the longest backoff after a resume
    # (:meth:`ran_stably`): a pause that repeats keeps its backoff and its one warning.
    enospc_events: set[str] = field(default_factory=set)
    resumed_on: dict[str, tuple[int, int]] = field(default_factory=dict)
    room_drives: set[str] = field(default_factory=set)
    backing_full: set[str] = field(default_factory=set)
    # Arrived paused from a live migration (``monitor/handoff.py``): resumed here only once
    # the source's claim of an ENOSPC pause was adopted. Cleared when the VM runs.
    arrival: Arrival | None = None
    # This host's claim of the pause (``monitor/pauseclaims.py``): when the VM entered its
    # current ENOSPC pause, while that pause is autoextend's. Kept through the migration's
    # own pause (finish-migrate, postmigrate) while a migration out runs: the claim must
    # outlive the guest's stay here. Cleared when the VM runs, or pauses for another
    # reason with no migration.
    claimed_at: float | None = None

    def apply(
        self, event: VmEvent, now: float, *, reason: PauseReason | None = None,
        unmanaged: tuple[str, ...] = (),
    ) -> tuple[Action, ...]:
        before = self.state
        result = step(before, event, self.policy)
        self.state = result.state
        if (result.state is VmState.RUNNING and before is VmState.PAUSED_ENOSPC
                and not self.backing_full):
            # An ENOSPC resume worked (room is checked before each): no backoff owed. Not so
            # on a full backing store: it pauses again at once, and the backoff holds until
            # the VM ran stably.
            self.resume_attempts = 0
            self.last_resume_at = None
        if result.state is VmState.RUNNING and before in PAUSED:
            self.full_drives = set()
            self.enospc_events = set()
            self.room_drives = set()
            self.killed = False
            self.stale_views = {}
            self.arrival = None
        if result.state is VmState.RUNNING:
            self.pause_reason = None
            self.unmanaged = ()
            self.paused_at = None
            self.probe_ok_in_a_row = 0
            self.first_ok_at = None
        elif before is not result.state and result.state in PAUSED:
            self.pause_reason = reason
            self.paused_at = now
            self.probe_ok_in_a_row = 0
            self.first_ok_at = None
            if result.state is VmState.PAUSED_ENOSPC_UNMANAGED:
                self.unmanaged = unmanaged
        self._keep_claim(result.state, now)
        if Action.KILL in result.actions:
            self.killed = True
        if Action.RESUME in result.actions:
            self.resume_attempts += 1
            self.last_resume_at = now
        return result.actions

    def _keep_claim(self, state: VmState, now: float) -> None:
        if state is VmState.PAUSED_ENOSPC:
            if self.claimed_at is None:
                self.claimed_at = now
        elif state is VmState.RUNNING or self.migration is MigState.NONE:
            self.claimed_at = None

    @property
    def paused(self) -> bool:
        return self.state in PAUSED

    def resume_due_at(self, initial: float, maximum: float) -> float:
        """When the next resume may be sent: at most one per backoff step."""
        if self.last_resume_at is None:
            return 0.0
        return self.last_resume_at + backoff(self.resume_attempts, initial, maximum)

    def probe_result(self, ok: bool, now: float, spacing: float) -> bool:
        """Record one storage probe; True once it succeeded twice in a row, the second at
        least ``spacing`` seconds after the first (storage that answers, and keeps answering).
        """
        if not ok:
            self.probe_ok_in_a_row = 0
            self.first_ok_at = None
            return False
        if self.probe_ok_in_a_row == 0 or self.first_ok_at is None:
            self.probe_ok_in_a_row = 1
            self.first_ok_at = now
            return False
        if now - self.first_ok_at >= spacing:
            self.probe_ok_in_a_row = 2
        return self.probe_ok_in_a_row >= 2

    def ran_stably(self, now: float, maximum: float) -> None:
        """Running for longer than the longest backoff since the last resume: start over."""
        if (self.state is VmState.RUNNING and self.last_resume_at is not None
                and now - self.last_resume_at >= maximum):
            self.resume_attempts = 0
            self.last_resume_at = None
            self.room_drives = set()
            self.backing_full = set()

    def describe(self) -> str | None:
        if self.state is VmState.PAUSED_OTHER and self.pause_reason is not None:
            return self.pause_reason.value  # user, migration, other: the hypervisor's word
        if self.state is VmState.PAUSED_ENOSPC and self.backing_full:
            return "enospc, backing store full"
        return describe(self.state, self.unmanaged)

    def managed_drive_full(self, drive: str) -> None:
        """A drive autoextend manages ran out of space (event, watermark or the hypervisor's
        word): an ENOSPC pause now is autoextend's to resume once the drive has room."""
        self.full_drives.add(drive)

    @property
    def ours(self) -> bool:
        return bool(self.full_drives)

    def resuming(self, armed: dict[str, tuple[int, int]]) -> None:
        """A resume is about to be sent; ``armed``: each armed drive's (physical, threshold).
        A pause seen after it is a new one (``monitor/backing.py``)."""
        self.resumed_on = dict(armed)
        self.enospc_events = set()

    def record(self, what: str) -> None:
        """Remember the last resume or kill and its reason, for ``autoextend status``."""
        self.last_action = what
