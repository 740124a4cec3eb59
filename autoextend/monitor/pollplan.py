"""Which VMs a safety-net poll looks at (pure).

Events drive the monitor: a drive whose threshold is armed on a running VM tells us when it
needs room (vdsm polls only drives whose threshold is not set, for the same reason). So a
poll every ``poll_interval_s`` looks only at VMs with something to do -- a drive not armed
or waiting for a retry, a VM paused for lack of space or on an I/O error, a failing VM, a
resync pending, a live migration in progress, a block job's target -- and every
``full_poll_interval_s`` at every VM (the safety net under the safety net: a lost event, a
size changed behind our back). An idle host with 1,000 armed drives then costs a sweep a
minute instead of four QMP commands and twenty size reads per VM every two seconds.
"""

from __future__ import annotations

from autoextend.monitor.drive import ThresholdState
from autoextend.monitor.migration import MigState
from autoextend.monitor.vmstate import VmState
from autoextend.monitor.vmtask import VmTask

#: Drive states a poll acts on (SET waits for its event; EXTENDING and DISABLED have an
#: owner or nothing to do).
NEEDS_LOOK = frozenset({ThresholdState.UNSET, ThresholdState.EXCEEDED})


#: VM states a poll acts on: an ENOSPC pause (resume once there is room) and an I/O-error
#: pause (probe, resume or kill). A running VM waits for its drives' events; a VM paused by
#: someone else, or on a drive autoextend does not manage, waits for its RESUME event.
POLLED_STATES = frozenset({VmState.PAUSED_ENOSPC, VmState.PAUSED_IO_ERROR})

#: Migration states a poll acts on (``monitor/migration.py``): the source learns how the
#: migration ended, the destination refreshes its view at every look.
MIGRATING = frozenset({MigState.MIGRATING_OUT, MigState.INCOMING})


def needs_poll(vm: VmTask) -> bool:
    """True when a poll of ``vm`` may have something to do."""
    if vm.failures or vm.resync_pending or vm.machine.state in POLLED_STATES:
        return True
    if vm.machine.migration_stale or vm.machine.migration in MIGRATING:
        return True  # a destination refreshes at every look while the migration runs
    # A block job's target: a job paused for lack of space is seen (and resumed) by a look.
    return any(d.state in NEEDS_LOOK or d.enospc or d.info.job for d in vm.drives.values())


def full_poll_every(poll_interval_s: float, full_poll_interval_s: float | None) -> int:
    """Every how many polls all VMs are looked at (at least 1)."""
    if full_poll_interval_s is None:
        return FULL_POLL_DEFAULT_FACTOR
    return max(1, round(full_poll_interval_s / poll_interval_s))


#: Without ``full_poll_interval_s``: every 30th poll looks at every VM (60 s by default).
FULL_POLL_DEFAULT_FACTOR = 30
