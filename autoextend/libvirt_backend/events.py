"""libvirt events and domain states -> the monitor's vocabulary (pure; no libvirt calls).

Lifecycle events (``event``, ``detail``):

- STARTED (booted, migrated in, restored, from snapshot, wakeup) -> :class:`VmAppeared`
- STOPPED (shutdown, destroyed, crashed, migrated away, saved, failed) -> :class:`VmGone`
- SUSPENDED: paused by an operator -> ``VmPaused(USER)``; migration, post-copy ->
  ``VmPaused(MIGRATION)``; I/O error -> ``VmPaused(ENOSPC)`` when an ENOSPC I/O error was
  reported since the VM last ran, otherwise :class:`Classify` (ask ``dom.state()`` and
  ``diskErrors()``); watchdog, restore, snapshot, API error -> ``VmPaused(OTHER)``
- RESUMED (any detail) -> :class:`VmResumed`
- CRASHED (kept paused), PMSUSPENDED -> ``VmPaused(OTHER)``
- DEFINED, UNDEFINED, SHUTDOWN -> nothing: only running domains are monitored. Defining a
  domain does not start it, undefining a running one does not stop it, and a guest shutdown
  is followed by STOPPED.

BLOCK_THRESHOLD arrives twice for one crossing, as ``vda`` and ``vda[N]``; only the indexed
one is used (the name the threshold was set on, vdsm BZ 1983429).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import libvirt

from autoextend.libvirt_backend.domxml import DiskFacts, indexed_name, parse_indexed_name
from autoextend.monitor.protocols import (
    DriveIoError,
    EnospcPause,
    HypervisorEvent,
    PauseReason,
    RunState,
    ThresholdCrossed,
    VmAppeared,
    VmGone,
    VmPaused,
    VmResumed,
)


@dataclass(frozen=True)
class Classify:
    """The pause reason needs a state query: an I/O error pause not known to be ENOSPC."""

    vm: str


LifecycleOutcome = HypervisorEvent | Classify | None

_SUSPENDED_REASONS: dict[int, PauseReason] = {
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_PAUSED: PauseReason.USER,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED: PauseReason.MIGRATION,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY: PauseReason.MIGRATION,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED: PauseReason.MIGRATION,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_WATCHDOG: PauseReason.OTHER,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_RESTORED: PauseReason.OTHER,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT: PauseReason.OTHER,
    libvirt.VIR_DOMAIN_EVENT_SUSPENDED_API_ERROR: PauseReason.OTHER,
}


def lifecycle_outcome(vm: str, event: int, detail: int, *, enospc_seen: bool) -> LifecycleOutcome:
    """What a LIFECYCLE event means for the monitor (see the module docstring)."""
    if event == libvirt.VIR_DOMAIN_EVENT_STARTED:
        return VmAppeared(vm)
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED:
        return VmGone(vm, clean=detail == libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN)
    if event == libvirt.VIR_DOMAIN_EVENT_RESUMED:
        return VmResumed(vm)
    if event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED:
        if detail == libvirt.VIR_DOMAIN_EVENT_SUSPENDED_IOERROR:
            return VmPaused(vm, PauseReason.ENOSPC) if enospc_seen else Classify(vm)
        reason = _SUSPENDED_REASONS.get(detail)
        return VmPaused(vm, reason) if reason is not None else Classify(vm)
    if event in (libvirt.VIR_DOMAIN_EVENT_CRASHED, libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED):
        return VmPaused(vm, PauseReason.OTHER)
    return None


def threshold_outcome(vm: str, dev: str, threshold: int, excess: int) -> ThresholdCrossed | None:
    """A BLOCK_THRESHOLD event on ``vda[N]``; None for the duplicate on the plain ``vda``."""
    if parse_indexed_name(dev) is None:
        return None
    if not all(isinstance(v, int) and 0 <= v < (1 << 63) for v in (threshold, excess)):
        return None  # no real offset: the next poll reads the numbers afresh
    return ThresholdCrossed(vm, dev, threshold, excess)


def io_error_outcome(
    vm: str, src_path: str, reason: str, drive_by_path: Mapping[str, str]
) -> EnospcPause | None:
    """An IO_ERROR_REASON event: ENOSPC on the drive at ``src_path`` (``""`` if not known).

    libvirt sets ``reason`` to ``"enospc"`` exactly when QEMU reported ``nospace``; other I/O
    errors are left to the lifecycle pause (never resumed by autoextend).
    """
    if reason != "enospc":
        return None
    return EnospcPause(vm, drive_by_path.get(src_path, ""))


_PAUSED_REASONS: dict[int, PauseReason] = {
    libvirt.VIR_DOMAIN_PAUSED_USER: PauseReason.USER,
    libvirt.VIR_DOMAIN_PAUSED_MIGRATION: PauseReason.MIGRATION,
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY: PauseReason.MIGRATION,
    libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED: PauseReason.MIGRATION,
}

_RUNNING_STATES = (
    libvirt.VIR_DOMAIN_RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED,   # running, waiting on a resource
    libvirt.VIR_DOMAIN_SHUTDOWN,  # still running while the guest shuts down
)


def needs_disk_errors(state: int, reason: int) -> bool:
    """Whether :func:`run_state_of` needs ``dom.diskErrors()`` to decide (I/O error pause)."""
    return bool(state == libvirt.VIR_DOMAIN_PAUSED and reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR)


def enospc_only(disk_errors: Mapping[str, int]) -> bool:
    """True when some disk reports no space and no disk reports another error."""
    none: int = libvirt.VIR_DOMAIN_DISK_ERROR_NONE
    no_space: int = libvirt.VIR_DOMAIN_DISK_ERROR_NO_SPACE
    errors = [code for code in disk_errors.values() if code != none]
    return bool(errors) and all(code == no_space for code in errors)


def run_state_of(
    state: int, reason: int, disk_errors: Mapping[str, int] | None = None
) -> RunState | None:
    """``dom.state()`` (+ ``diskErrors()`` for I/O error pauses) -> RunState; None when the
    domain is not running at all (shut off).

    An I/O error pause counts as ENOSPC only if every disk error is "no space": resuming
    cannot help a VM that also has another I/O error, so that one is IO_ERROR.
    """
    if state in _RUNNING_STATES:
        return RunState(True)
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        return None
    if state == libvirt.VIR_DOMAIN_PAUSED:
        if reason == libvirt.VIR_DOMAIN_PAUSED_IOERROR:
            enospc = disk_errors is not None and enospc_only(disk_errors)
            return RunState(False, PauseReason.ENOSPC if enospc else PauseReason.IO_ERROR)
        return RunState(False, _PAUSED_REASONS.get(reason, PauseReason.OTHER),
                        prelaunch=reason == libvirt.VIR_DOMAIN_PAUSED_STARTING_UP)
    return RunState(False, PauseReason.OTHER)  # crashed, pmsuspended, no state


def drive_errors(disk_errors: Mapping[str, int], disks: list[DiskFacts]) -> tuple[
    DriveIoError, ...
]:
    """``dom.diskErrors()`` -> every disk in error, raw or qcow2, managed or not, named like
    the monitor's drives (``vda[1]`` when the live XML gives the top image's index), with the
    source path from the domain XML."""
    none: int = libvirt.VIR_DOMAIN_DISK_ERROR_NONE
    no_space: int = libvirt.VIR_DOMAIN_DISK_ERROR_NO_SPACE
    by_target = {d.target: d for d in disks}
    found: list[DriveIoError] = []
    for target, code in sorted(disk_errors.items()):
        if code == none:
            continue
        disk = by_target.get(target)
        name = target
        if disk is not None and disk.index is not None:
            name = indexed_name(target, disk.index)
        found.append(DriveIoError(drive=name, path=disk.path if disk else "",
                                nospace=code == no_space))
    return tuple(found)
