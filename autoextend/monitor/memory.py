"""In-memory hypervisor, volumes and extender, for unit tests of the monitor's logic.

Not a proof that anything works with QEMU or libvirt: the integration tests do that. This
exists to drive the state machine through exact sequences (duplicates, lost events, failures,
operator pauses) quickly and deterministically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import anyio
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from autoextend.errors import HypervisorError
from autoextend.monitor.migration import NOT_MIGRATING, MigrationInfo, Role
from autoextend.monitor.protocols import (
    DriveInfo,
    DriveIoError,
    DrivesChanged,
    EnospcPause,
    ExtendOutcome,
    HypervisorEvent,
    HypervisorHealth,
    IoLimits,
    MigrationChanged,
    OutcomeCode,
    OutcomeKind,
    PauseReason,
    RefreshGate,
    RunState,
    ThresholdCrossed,
    VmAppeared,
    VmGone,
    VmNotFound,
    VmPaused,
    VmResumed,
)
from autoextend.volumes import (
    ExtendResult,
    LocalAuthority,
    NoAuthority,
    SpmAuthority,
    VgFigures,
    VolumeExists,
    VolumeNotFound,
    VolumeRef,
    VolumeSpaceError,
)


class MemoryVolumes:
    """Volume sizes by reference: an in-memory :class:`~autoextend.volumes.VolumeBackend`.

    It passes the same conformance suite as the lvm and loop backends
    (``tests/conformance/test_volume_backend.py``): sizes round up to ``extent_size``
    (1 byte by default: exact sizes), ``extend`` never shrinks, a missing volume raises
    :class:`~autoextend.volumes.VolumeNotFound`, a VG given a capacity
    (:meth:`set_vg_capacity`) runs out of space, and a view without the authority to write
    (:meth:`host_side`) cannot extend. There are no block devices: every host sees the
    metadata size at once, so ``refresh`` only reads it.
    """

    def __init__(self, *, extent_size: int = 1, authority: SpmAuthority | None = None) -> None:
        self.sizes: dict[VolumeRef, int] = {}
        self.capacities: dict[str, int] = {}  # VG -> bytes; a VG without one is unlimited
        self.extent_size = extent_size
        self.authority: SpmAuthority = authority or LocalAuthority()
        self.extend_calls: list[tuple[VolumeRef, int]] = []
        #: A volume's size in the metadata where it differs from this host's view (a test
        #: makes a view stale: extended elsewhere, or shrunk behind the service's back);
        #: ``refresh`` brings the view to it. Absent: one size, the view is the metadata.
        self.metadata: dict[VolumeRef, int] = {}

    def host_side(self) -> MemoryVolumes:
        """The same volumes seen by a host that may not write metadata (not the SPM)."""
        view = MemoryVolumes(extent_size=self.extent_size, authority=NoAuthority())
        view.sizes, view.capacities, view.metadata = self.sizes, self.capacities, self.metadata
        return view

    def _rounded(self, size: int) -> int:
        return -(-size // self.extent_size) * self.extent_size

    def _current(self, volume: VolumeRef) -> int:
        try:
            return self.sizes[volume]
        except KeyError:
            raise VolumeNotFound(str(volume)) from None

    async def create(self, volume: VolumeRef, size: int) -> None:
        self.authority.check()
        if volume in self.sizes:
            raise VolumeExists(str(volume))
        self.sizes[volume] = self._rounded(size)

    async def set_vg_capacity(self, vg: str, size: int | None) -> None:
        if size is None:
            self.capacities.pop(vg, None)
        else:
            self.capacities[vg] = size

    async def free_bytes(self, vg: str) -> int | None:
        capacity = self.capacities.get(vg)
        if capacity is None:
            return None
        return capacity - sum(size for ref, size in self.sizes.items() if ref.vg == vg)

    async def vg_figures(self, vgs: Sequence[str]) -> list[VgFigures]:
        """``volumes.ReportsVgFigures``: the VGs given a capacity (the others are unlimited,
        without figures, like a loop VG without ``.vg_size``)."""
        out = []
        for vg in vgs:
            free = await self.free_bytes(vg)
            if free is not None:
                out.append(VgFigures(vg, self.capacities[vg], max(0, free)))
        return out

    async def extend(self, volume: VolumeRef, size: int) -> ExtendResult:
        self.extend_calls.append((volume, size))
        self.authority.check()
        current = max(self._current(volume), self.metadata.pop(volume, 0))
        self.sizes[volume] = current  # as lvextend grows from the metadata, then refreshes
        target = self._rounded(size)
        if target <= current:
            return ExtendResult(current, False, current)
        free = await self.free_bytes(volume.vg)
        if free is not None and target - current > free:
            raise VolumeSpaceError(f"VG {volume.vg}: {free} bytes free, {volume} needs "
                                   f"{target - current} more")
        self.sizes[volume] = target
        return ExtendResult(target, True, current)

    async def refresh(self, volume: VolumeRef) -> int:
        current = self._current(volume)
        if self.metadata.get(volume, current) != current:
            self.sizes[volume] = self.metadata.pop(volume)
        return self._current(volume)

    async def size(self, volume: VolumeRef) -> int:
        return self._current(volume)

    def lookup(self, path: str) -> VolumeRef | None:
        vg, _, lv = path.removeprefix("/dev/").partition("/")
        ref = VolumeRef(vg, lv)
        return ref if ref in self.sizes else None

    def device_path(self, volume: VolumeRef) -> str:
        return f"/dev/{volume.vg}/{volume.lv}"

    async def reduce(self, volume: VolumeRef, size: int) -> ExtendResult:
        """Shrink to ``size`` rounded up to the extent size; never grows."""
        self.authority.check()
        current = self._current(volume)
        target = self._rounded(size)
        if target >= current:
            return ExtendResult(current, False)
        self.sizes[volume] = target
        return ExtendResult(target, True, current)

    async def metadata_size(self, volume: VolumeRef) -> int:
        """The view's size, unless a test set another in :attr:`metadata`."""
        current = self._current(volume)
        return self.metadata.get(volume, current)

    def holders_paths(self, volume: VolumeRef) -> list[str]:
        return [self.device_path(volume)]

    async def vg_extent_size(self, vg: str) -> int:
        return self.extent_size

    async def aclose(self) -> None:
        return None


@dataclass
class MemoryDrive:
    volume: VolumeRef
    capacity: int
    allocation: int = 0
    threshold: int = 0
    job: str = ""           # a block job's target (see DriveInfo.job)
    job_id: str = ""
    job_paused: bool = False
    job_need: int = 0
    error_policy: str = ""  # the drive's werror (DriveInfo.error_policy)
    limits: IoLimits = IoLimits()  # the drive's I/O limits (io_limits / set_io_limits)
    backing_full: bool = False  # the storage under the volume is full: every write fails
    retry: int = 0  # a write refused for that, retried on resume (as QEMU does on cont)
    cluster_size: int = 0  # DriveInfo.cluster_size (0: not reported)
    bitmaps: tuple[tuple[str, int], ...] = ()  # persistent bitmaps (name, granularity)


@dataclass
class MemoryVm:
    drives: dict[str, MemoryDrive] = field(default_factory=dict)
    running: bool = True
    reason: PauseReason | None = None
    errors: tuple[DriveIoError, ...] = ()
    prelaunch: bool = False  # started paused and never run yet (QEMU -S)


class MemoryHypervisor:
    def __init__(self, volumes: MemoryVolumes) -> None:
        self.volumes = volumes
        self.vms: dict[str, MemoryVm] = {}
        self.resumes: list[str] = []
        self.kills: list[str] = []
        self.suspends: list[str] = []
        self.job_resumes: list[tuple[str, str]] = []
        self.thresholds: list[tuple[str, str, int]] = []
        #: Every set_io_limits call: (vm, drive, limits).
        self.limit_calls: list[tuple[str, str, IoLimits]] = []
        self.drive_reads = 0  # drives() calls: a look reads them, the fast paths do not
        self.fail_set_threshold = False
        self.fail_kills = 0  # the next N kills fail
        #: Per VM, what ``migration()`` answers (absent: not migrating).
        self.migrations: dict[str, MigrationInfo] = {}
        self.problem: str | None = None  # what health() reports as the current problem
        self.unidentified = 0  # what health() reports as VMs found but not identified
        self._events: MemoryObjectSendStream[HypervisorEvent] | None = None

    # --- test controls

    def add_vm(self, vm: str, drives: dict[str, tuple[VolumeRef, int, int]]) -> None:
        """drives: name -> (volume, initial physical size, capacity)."""
        record = MemoryVm()
        for name, (volume, physical, capacity) in drives.items():
            self.volumes.sizes[volume] = physical
            record.drives[name] = MemoryDrive(volume, capacity)
        self.vms[vm] = record
        self.emit(VmAppeared(vm))

    def add_job_target(self, vm: str, name: str, volume: VolumeRef, physical: int,
                       capacity: int, *, job: str, job_id: str, need: int = 0) -> None:
        """A block job's target appears as one more drive of ``vm``."""
        self.volumes.sizes[volume] = physical
        self.vms[vm].drives[name] = MemoryDrive(volume, capacity, job=job, job_id=job_id,
                                                job_need=need)
        self.emit(DrivesChanged(vm))

    def remove_vm(self, vm: str) -> None:
        del self.vms[vm]
        self.emit(VmGone(vm))

    def emit(self, event: HypervisorEvent) -> None:
        if self._events is not None:
            self._events.send_nowait(event)

    def write(self, vm: str, drive: str, nbytes: int, *, events: bool = True) -> None:
        """The guest writes ``nbytes`` more; fires threshold / ENOSPC like QEMU would."""
        rec = self.vms[vm]
        d = rec.drives[drive]
        physical = self.volumes.sizes[d.volume]
        end = d.allocation + nbytes
        if d.threshold and end > d.threshold:
            thr, d.threshold = d.threshold, 0
            if events:
                self.emit(ThresholdCrossed(vm, drive, thr, end - thr))
        if d.backing_full and nbytes > 0:
            # The storage under the volume refuses the write (a thin array out of space):
            # ENOSPC inside the volume; nothing is written, and the write is retried on cont.
            d.retry = nbytes
            if rec.running:
                rec.running, rec.reason = False, PauseReason.ENOSPC
                if events:
                    self.emit(EnospcPause(vm, drive))
                    self.emit(VmPaused(vm, PauseReason.ENOSPC))
            return
        d.retry = 0
        d.allocation = end
        if d.job and end > physical:  # a job with on-error=enospc pauses itself, not the VM
            if not d.job_paused:
                d.job_paused = True
                if events:
                    self.emit(DrivesChanged(vm))
            return
        if end > physical and rec.running:
            rec.running, rec.reason = False, PauseReason.ENOSPC
            if events:
                self.emit(EnospcPause(vm, drive))
                self.emit(VmPaused(vm, PauseReason.ENOSPC))

    def pause(
        self, vm: str, reason: PauseReason, errors: tuple[DriveIoError, ...] = ()
    ) -> None:
        """Pause as the hypervisor would; ``errors`` are the drives it reports in error."""
        rec = self.vms[vm]
        rec.running, rec.reason, rec.errors = False, reason, errors
        self.emit(VmPaused(vm, reason))

    # --- the Hypervisor protocol

    async def run(
        self,
        events: MemoryObjectSendStream[HypervisorEvent],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        self._events = events
        for vm in self.vms:
            events.send_nowait(VmAppeared(vm))
        task_status.started()
        await anyio.sleep_forever()

    def _vm(self, vm: str) -> MemoryVm:
        try:
            return self.vms[vm]
        except KeyError:
            raise VmNotFound(vm) from None

    async def migration(self, vm: str) -> MigrationInfo:
        self._vm(vm)
        return self.migrations.get(vm, NOT_MIGRATING)

    async def outgoing_migration(self, vm: str) -> bool:
        """From the state ``migrate`` set (what a backend's events would have said)."""
        info = await self.migration(vm)
        return info.role is Role.SOURCE and info.running

    def migrate(self, vm: str, info: MigrationInfo) -> None:
        """Set the VM's migration state, with the event a hypervisor would send."""
        self.migrations[vm] = info
        self.emit(MigrationChanged(vm))

    async def drives(self, vm: str) -> list[DriveInfo]:
        rec = self._vm(vm)
        self.drive_reads += 1
        return [
            DriveInfo(vm, name, f"node-{name}", self.volumes.device_path(d.volume), d.capacity,
                      d.allocation, self.volumes.sizes[d.volume], d.threshold, job=d.job,
                      job_id=d.job_id, job_paused=d.job_paused, job_need=d.job_need,
                      error_policy=d.error_policy, cluster_size=d.cluster_size,
                      bitmaps=d.bitmaps)
            for name, d in rec.drives.items()
        ]

    async def set_threshold(self, vm: str, drive: DriveInfo, threshold: int) -> None:
        if self.fail_set_threshold:
            raise HypervisorError("set_threshold failed (injected)")
        found = self._vm(vm).drives.get(drive.drive)
        if found is None:  # as QEMU and libvirt refuse a node they do not have
            raise HypervisorError(f"{vm}: no drive {drive.drive}")
        found.threshold = threshold
        self.thresholds.append((vm, drive.drive, threshold))

    async def run_state(self, vm: str) -> RunState:
        rec = self._vm(vm)
        return RunState(rec.running, rec.reason, rec.errors if not rec.running else (),
                        prelaunch=rec.prelaunch and not rec.running)

    async def kill(self, vm: str) -> None:
        self._vm(vm)
        if self.fail_kills > 0:  # as libvirt's destroy of a QEMU stuck on failing storage
            self.fail_kills -= 1
            raise HypervisorError(f"{vm}: kill failed (injected)")
        self.kills.append(vm)
        self.remove_vm(vm)

    async def resume(self, vm: str) -> None:
        rec = self._vm(vm)
        self.resumes.append(vm)
        rec.running, rec.reason, rec.errors, rec.prelaunch = True, None, (), False
        self.emit(VmResumed(vm))
        for name, d in rec.drives.items():  # QEMU retries the failed write on cont
            if d.allocation > self.volumes.sizes[d.volume]:
                self.write(vm, name, 0)
            elif d.retry:
                self.write(vm, name, d.retry)

    async def suspend(self, vm: str) -> None:
        rec = self._vm(vm)
        self.suspends.append(vm)
        if rec.running:
            self.pause(vm, PauseReason.USER)

    async def resume_job(self, vm: str, job_id: str) -> None:
        self.job_resumes.append((vm, job_id))
        for d in self._vm(vm).drives.values():
            if d.job_id == job_id:
                d.job_paused = d.allocation > self.volumes.sizes[d.volume]

    def volume_of(self, drive: DriveInfo) -> VolumeRef | None:
        return self.volumes.lookup(drive.path)

    def _guest_drive(self, vm: str, drive: DriveInfo) -> MemoryDrive:
        found = self._vm(vm).drives.get(drive.drive)
        if found is None or found.job:  # as QEMU and libvirt refuse a device they lack
            raise HypervisorError(f"{vm}: no guest device {drive.drive}")
        return found

    async def io_limits(self, vm: str, drive: DriveInfo) -> IoLimits:
        return self._guest_drive(vm, drive).limits

    async def set_io_limits(self, vm: str, drive: DriveInfo, limits: IoLimits) -> None:
        self._guest_drive(vm, drive).limits = limits
        self.limit_calls.append((vm, drive.drive, limits))

    # --- health (Hypervisor.health)

    def health(self) -> HypervisorHealth:
        return HypervisorHealth(problem=self.problem, unidentified=self.unidentified)


class MemoryExtender:
    """Extends MemoryVolumes; can be told to fail or to hold requests until released.

    Without those test controls it passes the Extender conformance suite
    (``tests/conformance/test_extender.py``) like the local and mailbox extenders.
    """

    def __init__(self, volumes: MemoryVolumes) -> None:
        self.volumes = volumes
        self.fail_with: OutcomeKind | None = None
        self.gate: anyio.Event | None = None
        self.calls = 0
        self.unrefreshed = 0  # calls with refresh=False (a VM migrating out)
        #: refresh=False grows only this "metadata" size; ``volumes.sizes`` is this host's
        #: view of the volume, which such a call leaves as it is.
        self.metadata: dict[VolumeRef, int] = {}

    async def extend(
        self, volume: VolumeRef, size: int, *, refresh: bool = True,
        may_refresh: RefreshGate | None = None,
    ) -> ExtendOutcome:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if refresh and may_refresh is not None and not await may_refresh():
            refresh = False  # as the mailbox extender: asked after the (held) request
        self.unrefreshed += not refresh
        if self.fail_with is not None:
            return ExtendOutcome(self.fail_with, 0, "injected failure")
        if not refresh:
            grown = max(size, self.metadata.get(volume, 0), self.volumes.sizes[volume])
            self.metadata[volume] = grown
            return ExtendOutcome(OutcomeKind.OK, grown, refreshed=False)
        try:
            result = await self.volumes.extend(volume, size)
        except VolumeNotFound as exc:
            return ExtendOutcome(OutcomeKind.REJECTED, 0, str(exc), code=OutcomeCode.NOT_FOUND)
        except VolumeSpaceError as exc:
            return ExtendOutcome(OutcomeKind.FAILED, 0, str(exc), code=OutcomeCode.VG_FULL)
        return ExtendOutcome(OutcomeKind.OK, result.size)
