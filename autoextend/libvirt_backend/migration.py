"""libvirt's migration job and lifecycle events in the monitor's neutral terms (pure).

The job (``virDomainGetJobStats``): ``type`` says whether a job runs (bounded/unbounded),
ended (completed/failed/cancelled) or none; ``operation`` says which (migration in or out).
A live migration's lifecycle events: on the destination STARTED/MIGRATED when the incoming
domain is created (paused, reason migration) and RESUMED/MIGRATED when it takes over; on the
source SUSPENDED/MIGRATED (or POSTCOPY) at the switchover, STOPPED/MIGRATED when it
completed, and RESUMED/MIGRATED when a migration failed after the source paused. None of
them marks the *start* of an outgoing migration; libvirt's migration iteration event does
(on the source only, at the start of the first RAM pass): ``outgoing.py`` keeps what it says,
and the monitor asks before every refresh it makes (``monitor/migrating.py``,
``Hypervisor.outgoing_migration``: the mark, else one ``jobStats``), which is what freezes the
source's view.
"""

from __future__ import annotations

from collections.abc import Mapping

import libvirt

from autoextend.monitor.migration import NOT_MIGRATING, MigrationInfo, Phase, Role
from autoextend.monitor.protocols import MigrationChanged

_RUNNING_JOBS = frozenset({libvirt.VIR_DOMAIN_JOB_BOUNDED, libvirt.VIR_DOMAIN_JOB_UNBOUNDED})
_ENDED_JOBS: dict[int, Phase] = {
    libvirt.VIR_DOMAIN_JOB_COMPLETED: Phase.COMPLETED,
    libvirt.VIR_DOMAIN_JOB_FAILED: Phase.FAILED,
    libvirt.VIR_DOMAIN_JOB_CANCELLED: Phase.CANCELLED,
}
_ROLES: dict[int, Role] = {
    libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT: Role.SOURCE,
    libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_IN: Role.DESTINATION,
}
_MIGRATION_DETAILS: dict[int, frozenset[int]] = {
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED: frozenset({
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED,
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY,
        libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED,
    }),
    libvirt.VIR_DOMAIN_EVENT_RESUMED: frozenset({
        libvirt.VIR_DOMAIN_EVENT_RESUMED_MIGRATED,
        libvirt.VIR_DOMAIN_EVENT_RESUMED_POSTCOPY,
    }),
}


def migration_of(job: Mapping[str, object], state: int, reason: int) -> MigrationInfo:
    """The VM's migration role and phase from its job stats and ``dom.state()``."""
    job_type = job.get("type", libvirt.VIR_DOMAIN_JOB_NONE)
    operation = job.get("operation", libvirt.VIR_DOMAIN_JOB_OPERATION_UNKNOWN)
    role = _ROLES.get(operation) if isinstance(operation, int) else None
    if role is not None and job_type in _RUNNING_JOBS:
        return MigrationInfo(role, Phase.ACTIVE)
    if role is not None and isinstance(job_type, int) and job_type in _ENDED_JOBS:
        return MigrationInfo(role, _ENDED_JOBS[job_type])
    if state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_MIGRATION:
        # Paused for a migration with no migration job of its own: an incoming domain
        # not yet taken over (a source always has its job while it migrates out).
        return MigrationInfo(Role.DESTINATION, Phase.PENDING)
    return NOT_MIGRATING


def outgoing(job: Mapping[str, object]) -> bool:
    """Whether the job stats show an outgoing migration that has not ended."""
    return (job.get("operation") == libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT
            and job.get("type", libvirt.VIR_DOMAIN_JOB_NONE) in _RUNNING_JOBS)


def migration_event(vm: str, event: int, detail: int) -> MigrationChanged | None:
    """A lifecycle event that says a migration moved on (ask again), else None."""
    if detail in _MIGRATION_DETAILS.get(event, frozenset()):
        return MigrationChanged(vm)
    return None


def started_by_migration(event: int, detail: int) -> bool:
    """STARTED/MIGRATED: the domain was created here for an incoming migration."""
    return bool(event == libvirt.VIR_DOMAIN_EVENT_STARTED
                and detail == libvirt.VIR_DOMAIN_EVENT_STARTED_MIGRATED)


def ends_outgoing(event: int) -> bool:
    """A lifecycle event after which a source's outgoing mark no longer holds: STOPPED (the
    migration completed, or the domain went away), RESUMED (it failed after the pause, or
    an operator resumed the guest: ``jobStats`` is asked again either way)."""
    return event in (libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_RESUMED)
