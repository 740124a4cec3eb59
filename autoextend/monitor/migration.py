"""Live migration: what a host may do with a migrating VM's volumes (pure; no I/O).

On shared storage every host that has a VM's volume open has its *own* view of the volume's
size (its device-mapper table for the LV; in the lab, its own loop device). A view is only
as large as the last refresh on that host. If the guest ever runs on a host whose view is
smaller than the highest offset it has written, it reads zeros with no error where its data
is, and its writes fail with ENOSPC (vdsm BZ 1883399, BZ 1983882).

**The invariant.** Whenever the guest runs on a host, that host's view of each of its
volumes is at least as large as every view through which the guest has ever written.

**The protocol that keeps it** (one VM, source S, destination D):

* S, while an outgoing migration runs (state OUTGOING), may still extend (locally or
  through the SPM: that changes the metadata, not any view), but never refreshes its own
  view. So the guest's written data stays inside S's view as it was when the migration
  started (``V_S``).
* D refreshes every managed volume of the VM when the VM appears (state INCOMING, QEMU
  ``inmigrate``), and again at every look (event or poll) while the incoming migration is
  active; it arms no threshold and starts no extension meanwhile. A refresh shows the
  metadata size, which is at least every view ever made from it, so D's view is at least
  ``V_S`` before the guest can run on D.
* On completion D refreshes again (picking up what S extended during the migration), then
  arms thresholds and monitors as usual; a guest that ran out of space on S during the
  migration arrives paused and is resumed here, once its drives have room.
* On completion S does nothing more (the guest runs elsewhere; S never refreshes or
  resumes it again). On failure or cancellation the guest stays on S: S refreshes every
  managed volume, re-arms and resumes as usual (state NONE).

**The argument.** Views only grow, and only by a refresh on their own host. The guest
writes through S's view only while it runs on S; from the start of the migration S's view
is frozen at ``V_S``. D's refresh at appearance or at activation happens after S froze
(activation) or sees at least what S saw (appearance, when S extended before it), and the
metadata never shrinks, so ``view_D >= V_S`` before the switchover; after it, only D's
view matters and D refreshes before it arms. If the migration fails, S's view is refreshed
before the guest runs on (its pause is only ended by a resume after the refresh).

**How S learns of the migration.** From events and the looks it makes anyway, and from one
check right before an extension refreshes S's view (``Hypervisor.outgoing_migration``):

* QMP: QEMU emits ``MIGRATION`` (status ``setup``) inside the ``migrate`` command, before
  it sends anything to D, on every QMP monitor, when the ``events`` migration capability is
  on (libvirt turns it on when it starts QEMU; the lab does too). The backend records each
  ``MIGRATION`` status in its reader, as the message comes off the socket, so the check
  costs no command while the capability is on and no migration was seen; it asks
  (``query-status`` + ``query-migrate``) only once an event says a migration runs, or
  while QEMU sends none (the capability is read at connect and again every few drive-watch
  passes).
* libvirt: no event marks the start of an outgoing migration (its lifecycle events come at
  the switchover), so the check stays a query: one ``jobStats`` on a cached domain handle.

**The one gap, and what covers it.** A refresh on S passes the check only if S had read no
sign of a migration when it checked: over QMP, QEMU had not yet emitted ``setup`` when it
sent the last message S read (QMP keeps a monitor's messages in order), which is what the
old probe before every extension told too (QEMU had not started it when it answered). The
migration can still start between the check and the refresh (over the mailbox the check is
made before the SPM's round trip, as the probe was), and then ``V_S`` grows after D's
refresh at appearance. D's refreshes while the migration is active (each ``MIGRATION``
event D sends, each poll) cover it as soon as one comes after S's refresh, which is before
the switchover unless the whole migration is shorter than one poll interval. The window is
the same size as with the probe: from S's last read of QEMU to its refresh.

S never resumes a guest whose extension deferred its refresh, even before its VM task has
stepped to migrating-out (``VmMachine.deferred_sizes``, ``resume.py``): its view did not
grow. After an extension that did refresh, S re-arms and resumes from what it knows
(``vmtask.after_extension``): a resume changes no view, so it needs no look.

``step`` is pure and total; :class:`~autoextend.monitor.vmstate.VmMachine` holds the state
(one owner); ``monitor/migrating.py`` carries out the actions.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass


class Role(enum.Enum):
    NONE = "none"                # not migrating, as far as the hypervisor says
    SOURCE = "source"            # an outgoing migration (or its outcome) is known
    DESTINATION = "destination"  # an incoming migration (or its outcome) is known


class Phase(enum.Enum):
    """The hypervisor's word, in neutral terms (QMP ``query-migrate`` status, libvirt job)."""

    NONE = "none"            # no migration
    PENDING = "pending"      # incoming: waiting for the source (QMP inmigrate, no status yet)
    SETUP = "setup"
    ACTIVE = "active"        # transferring (also pre-switchover, device, postcopy)
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ENDED = frozenset({Phase.COMPLETED, Phase.FAILED, Phase.CANCELLED})


@dataclass(frozen=True)
class MigrationInfo:
    """``node_lengths``: on a destination whose incoming migration completed, per drive,
    the length the hypervisor took for the drive's device when it activated the drive
    (QEMU 7.2 reads within it and returns zeros past it, whatever the device's size now);
    None when the drives await activation (QEMU's ``late-block-activate``: at ``cont``,
    which reads the length again), once the guest did block I/O in this process (it has
    run here: ``qmp/migration.py: guest_did_io``), when the backend cannot tell, and
    otherwise."""

    role: Role
    phase: Phase
    node_lengths: tuple[tuple[str, int], ...] | None = None

    @property
    def running(self) -> bool:
        return self.role is not Role.NONE and self.phase not in ENDED and (
            self.phase is not Phase.NONE)


NOT_MIGRATING = MigrationInfo(Role.NONE, Phase.NONE)


class MigState(enum.Enum):
    NONE = "none"
    MIGRATING_OUT = "migrating-out"  # source: extend, never refresh; no resume here
    INCOMING = "incoming"            # destination: refreshed; no arming, no extending
    DEPARTED = "departed"            # source after completion: nothing more, ever


class MigAction(enum.Enum):
    FREEZE_VIEWS = "freeze-views"    # from now on, extend without refreshing
    REFRESH_ALL = "refresh-all"      # refresh every managed volume of the VM on this host
    REARM = "rearm"                  # re-read the drives and arm every threshold again
    NOTE = "note"                    # log and report the change


@dataclass(frozen=True)
class MigStep:
    state: MigState
    actions: tuple[MigAction, ...] = ()


def step(state: MigState, info: MigrationInfo) -> MigStep:
    """What the VM's migration state becomes on a fresh look, and what to do. Pure, total."""
    if state is MigState.DEPARTED:
        return MigStep(state)  # the guest runs elsewhere; a new QEMU would be a new VM
    if info.role is Role.SOURCE:
        if info.phase is Phase.COMPLETED:
            # Also when it completed before we saw it run: the destination refreshes.
            return MigStep(MigState.DEPARTED, (MigAction.NOTE,))
        if info.phase in (Phase.FAILED, Phase.CANCELLED, Phase.NONE):
            if state is MigState.MIGRATING_OUT:
                return MigStep(MigState.NONE,
                               (MigAction.NOTE, MigAction.REFRESH_ALL, MigAction.REARM))
            return MigStep(MigState.NONE)  # an old failed migration: nothing new
        # SETUP, ACTIVE (or PENDING, which a source never reports)
        if state is MigState.MIGRATING_OUT:
            return MigStep(state)
        return MigStep(MigState.MIGRATING_OUT, (MigAction.NOTE, MigAction.FREEZE_VIEWS))
    if info.role is Role.DESTINATION:
        if info.phase is Phase.COMPLETED:
            if state is MigState.INCOMING:
                return MigStep(MigState.NONE,
                               (MigAction.NOTE, MigAction.REFRESH_ALL, MigAction.REARM))
            # Arrived before we knew of it (this service started late, or a later look at
            # a VM that came here by migration): refreshing again is always safe.
            return MigStep(MigState.NONE, (MigAction.REFRESH_ALL,))
        if info.phase in (Phase.FAILED, Phase.CANCELLED):
            # The incoming QEMU is of no use (it exits); never act on it.
            return MigStep(MigState.DEPARTED, (MigAction.NOTE,))
        if state is MigState.INCOMING:
            # Refresh again at every look once the transfer runs: the source froze its view
            # by then, so any refresh it made as the migration began is covered before the
            # switchover (unless the whole migration is shorter than one poll).
            again = info.phase in (Phase.SETUP, Phase.ACTIVE)
            return MigStep(state, (MigAction.REFRESH_ALL,) if again else ())
        return MigStep(MigState.INCOMING, (MigAction.NOTE, MigAction.REFRESH_ALL))
    # Role.NONE: the hypervisor knows of no migration.
    if state is MigState.MIGRATING_OUT:
        return MigStep(MigState.NONE, (MigAction.NOTE, MigAction.REFRESH_ALL, MigAction.REARM))
    if state is MigState.INCOMING:
        return MigStep(MigState.NONE, (MigAction.NOTE, MigAction.REFRESH_ALL, MigAction.REARM))
    return MigStep(state)


def may_refresh(state: MigState) -> bool:
    """Whether this host may refresh the VM's volumes as part of an extension."""
    return state is MigState.NONE or state is MigState.INCOMING


def may_resume(state: MigState) -> bool:
    """Whether this host may resume the VM (a migrating-out guest is resumed on the
    destination after its refresh; a departed one is not ours)."""
    return state is MigState.NONE


def may_arm(state: MigState) -> bool:
    """Whether thresholds may be armed and extensions started for the VM's drives."""
    return state is MigState.NONE or state is MigState.MIGRATING_OUT


def short_activation(node_lengths: tuple[tuple[str, int], ...] | None,
                     views: Mapping[str, int], *, guest_has_run: bool,
                     covered: Mapping[str, int] | None = None) -> tuple[str, ...]:
    """The drives (sorted) of a VM that just arrived here whose hypervisor activated them
    with a length smaller than this host's view refreshed since: the guest would read zeros
    between the two (issue 31: an L2 table there read as zeros and written back from that
    copy). Nothing once the guest has run here (too late to stop it; its writes may have
    raised the length), when the lengths are unknown or await activation (None), or for a
    drive with no refreshed view.

    ``covered``: per drive, the view this host refreshed to while the migration was still
    incoming (the last such refresh). The source froze its view when the migration began,
    and the destination refreshes at every look while it runs (the argument above), so
    data the source wrote lies below that size: a drive activated at least that long reads
    nothing past its length, whatever the source extended in metadata afterwards (its
    deferred extensions: the guest never wrote there). Found by stop 41's clean-clone run:
    a guest that ran out of space on its frozen source view arrived with its drive
    activated at that view, below the view refreshed at the completion, and was stopped."""
    if guest_has_run or node_lengths is None:
        return ()
    covered = covered or {}
    return tuple(sorted({drive for drive, length in node_lengths
                         if drive in views and length < views[drive]
                         and not (drive in covered and length >= covered[drive])}))
