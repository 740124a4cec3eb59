"""What every part of the monitor shares: its dependencies, and the few rules over them.

One :class:`MonitorContext` per monitor, made by :class:`~.core.Monitor` and handed to each
collaborator (the VM tasks, the extension runner, the migration, job and resume steps).
A reload replaces its fields (``Monitor.reconfigure``); every reader looks them up at the
moment it decides, so new numbers apply from the next decision.

:class:`VmView` is what a collaborator may see and do of one VM: the VM's task
(``monitor/vmtask.py``) is the one implementation, and the only owner of what it shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from autoextend.clock import Clock
from autoextend.monitor import jobpolicy, policy
from autoextend.monitor.arrival import PauseHandoff
from autoextend.monitor.caps import CapBook
from autoextend.monitor.config import PolicySettings, ResumeSettings
from autoextend.monitor.drive import DriveState
from autoextend.monitor.observer import DriveAtCap, ExtendsInFlight, MonitorObserver
from autoextend.monitor.probe import StorageProbe
from autoextend.monitor.protocols import DriveInfo, Extender, Hypervisor, OutcomeKind
from autoextend.monitor.vm import LeaseOk, PolicyResolver, SpaceGate, VmMessage, log
from autoextend.monitor.vmstate import VmMachine
from autoextend.volumes import VolumeRef


class VolumeViews(Protocol):
    """This host's view of volumes (the volume backend's ``refresh``)."""

    async def refresh(self, volume: VolumeRef) -> int: ...


@dataclass(frozen=True)
class Sizes:
    """One volume as the view check sees it (``monitor/views.py``)."""

    view: int      # what this host's view of the volume shows now
    metadata: int  # the volume's size in the pool's metadata


class ViewSizes(Protocol):
    """Where the view check reads sizes, one call per VG (``monitor/views.py`` says what
    each source costs)."""

    async def view_sizes(self, vg: str, volumes: Sequence[VolumeRef]
                         ) -> dict[VolumeRef, Sizes]:
        """The view and metadata sizes of ``volumes`` (all in ``vg``); a volume that does
        not exist (any more) is left out. Raises VolumeError when the VG cannot be read."""
        ...


class VmView(Protocol):
    """One VM as its collaborators see it (implemented by ``vmtask.VmTask``)."""

    @property
    def name(self) -> str: ...

    @property
    def machine(self) -> VmMachine: ...

    @property
    def drives(self) -> dict[str, DriveState]: ...

    def post(self, message: VmMessage) -> None:
        """Queue a message for the VM's task (never blocks)."""

    def wake_at(self, when: float) -> None:
        """Make the VM's task look again at ``when``."""

    def start_extension(self, d: DriveState, info: DriveInfo | None = None) -> None:
        """Start the drive's extension task (if it is EXCEEDED)."""


class InFlight:
    """The number of extensions in flight, counted from the VMs' drives whenever it may
    have changed (never kept by hand); observers hear of each change."""

    def __init__(self, count: Callable[[], int], observer: MonitorObserver) -> None:
        self._count = count
        self._observer = observer
        self._last = 0

    def changed(self) -> None:
        now = self._count()
        if now != self._last:
            self._last = now
            self._observer.notify(ExtendsInFlight(now))


@dataclass
class MonitorContext:
    """The dependencies every part of the monitor uses (the settings are replaced on
    reload)."""

    hypervisor: Hypervisor
    extender: Extender
    settings: PolicySettings
    clock: Clock
    policy_for: PolicyResolver
    observer: MonitorObserver
    dry_run: bool
    resume: ResumeSettings
    probe: StorageProbe
    lease_ok: LeaseOk | None
    extend_deadline_override: float | None = None
    views: VolumeViews | None = None  # this host's refresh, for migrations
    view_sizes: ViewSizes | None = None  # the view check's sizes (monitor/views.py)
    space_gate: SpaceGate | None = None  # the monitor's constructor (capacity levels)
    in_flight: InFlight | None = field(default=None, repr=False)
    # The write throttle (monitor/throttle.py): is the pool's SPM term valid now (None: no
    # SPM, local mode), and how long an extension may take across an SPM failover (None:
    # the extension deadline).
    spm_ok: Callable[[], bool] | None = None
    failover_s: float | None = None
    caps: CapBook = field(default_factory=CapBook)  # the measured caps (monitor/caps.py)
    #: After an extension this host verified, re-arm and resume from what is known, and
    #: learn of migrations from events (``Hypervisor.outgoing_migration``). False restores
    #: the old path for the bench's before/after comparison: a migration probe before every
    #: extension and a full look (drives, run state) after it. Nothing else sets it.
    fast_resume: bool = True
    #: Where a destination learns whether a VM that arrived paused was paused by its source
    #: for ENOSPC (``monitor/handoff.py``); None: local mode, such a VM is never resumed.
    handoff: PauseHandoff | None = None

    @property
    def extend_deadline_s(self) -> float:
        """How long one extension may take before it counts as failed (see timeouts.py)."""
        if self.extend_deadline_override is not None:
            return self.extend_deadline_override
        return self.settings.extend_timeout_s

    def in_flight_changed(self) -> None:
        if self.in_flight is not None:
            self.in_flight.changed()

    def job_need(self, info: DriveInfo, pol: policy.DrivePolicy) -> int:
        """The size a job target should reach before its job writes (0: no pre-extension)."""
        return jobpolicy.need_size(info, pol) if self.settings.job_pre_extend else 0

    def retry_delay(self, d: DriveState, kind: OutcomeKind) -> float:
        """How long a failed extension of ``d`` waits before its retry."""
        if kind is OutcomeKind.REJECTED:
            return self.settings.retry_max_s
        return policy.backoff(d.attempts + 1, self.settings.retry_initial_s,
                              self.settings.retry_max_s)

    def disable(self, vm: str, d: DriveState) -> None:
        """The drive reached its cap: no further extension."""
        d.reached_cap()
        self.observer.notify(DriveAtCap(vm, d.name, d.volume))
        log.warning("drive reached its cap; no further extension", vm=vm, drive=d.name,
                    volume=str(d.volume), physical=d.info.physical, cap=d.cap)
