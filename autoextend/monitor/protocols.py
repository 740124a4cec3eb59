"""The monitor's two boundaries: the hypervisor below it and the extender beside it.

Hypervisor backends (``qmp/``, ``libvirt_backend/``) translate their native events into the
small dataclasses here and push them into a bounded stream the monitor owns. They answer
queries with :class:`DriveInfo`. Nothing here knows about mailboxes or LVM commands.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from autoextend.volumes import VolumeRef


@dataclass(frozen=True)
class DriveInfo:
    """One writable qcow2 drive on a block device, as the hypervisor sees it now.

    ``drive`` is the stable name the monitor keys state by (QMP: the qdev id such as
    ``vda``; libvirt: the indexed target such as ``vda[1]``). ``node`` is what the backend
    arms the threshold on (QMP: the protocol node name; libvirt: the indexed target).
    ``allocation`` is the highest written physical offset, ``physical`` the device size,
    ``capacity`` the guest-visible virtual size. ``threshold`` is 0 when none is armed.
    """

    vm: str
    drive: str
    node: str
    path: str
    capacity: int
    allocation: int
    physical: int
    threshold: int = 0


class PauseReason(enum.Enum):
    ENOSPC = "enospc"          # paused by werror=enospc: autoextend may resume it
    IO_ERROR = "io-error"      # paused by another I/O error: never resumed by us
    USER = "user"              # paused by an operator
    MIGRATION = "migration"
    OTHER = "other"


@dataclass(frozen=True)
class DriveError:
    """A drive the hypervisor reports in error while the VM is paused, managed or not.

    ``drive`` is named like :attr:`DriveInfo.drive` (so the monitor can tell its own drives
    from others); ``path`` is the device or file underneath (what a storage probe reads);
    ``nospace`` tells ENOSPC from any other I/O error.
    """

    drive: str
    path: str
    nospace: bool


@dataclass(frozen=True)
class RunState:
    running: bool
    pause_reason: PauseReason | None = None  # set when not running
    # Set for I/O error pauses: every drive in error (also drives autoextend does not manage:
    # raw, capacity 0, outside the pool), so an ENOSPC on one of those is never resumed.
    errors: tuple[DriveError, ...] = ()


# Events: the backend sends these into the monitor's stream.


@dataclass(frozen=True)
class VmAppeared:
    vm: str


@dataclass(frozen=True)
class VmGone:
    vm: str
    # True only when the guest shut itself down cleanly (never a migration, a crash, a kill
    # or a lost connection): what ``[policy] reduce_on_stop`` acts on.
    clean: bool = False


@dataclass(frozen=True)
class DrivesChanged:
    """Hot-plug/unplug or reconnect: re-query the VM's drives and resynchronise."""

    vm: str


@dataclass(frozen=True)
class ThresholdCrossed:
    vm: str
    drive: str
    threshold: int
    excess: int


@dataclass(frozen=True)
class EnospcError:
    """A write failed with ENOSPC on this drive (``drive`` may be empty if unknown)."""

    vm: str
    drive: str


@dataclass(frozen=True)
class VmPaused:
    vm: str
    reason: PauseReason


@dataclass(frozen=True)
class VmResumed:
    vm: str


HypervisorEvent = (
    VmAppeared | VmGone | DrivesChanged | ThresholdCrossed | EnospcError | VmPaused | VmResumed
)


class Hypervisor(Protocol):
    """A source of drive events and the calls the monitor makes back.

    All methods raise :class:`~autoextend.errors.HypervisorError` (or a subclass) on failure;
    ``VmNotFound`` when the VM is gone.
    """

    async def run(
        self,
        events: MemoryObjectSendStream[HypervisorEvent],
        *,
        task_status: TaskStatus[None],
    ) -> None:
        """Discover VMs, keep connections up and send events until cancelled.

        Calls ``task_status.started()`` once the first discovery pass is done. Sends
        :class:`VmAppeared` for each VM found (also after a reconnect, so the monitor
        resynchronises) and :class:`VmGone` when one disappears.
        """
        ...

    async def drives(self, vm: str) -> list[DriveInfo]:
        """The VM's monitorable drives with fresh allocation/physical/capacity."""
        ...

    async def set_threshold(self, vm: str, drive: DriveInfo, threshold: int) -> None: ...

    async def run_state(self, vm: str) -> RunState: ...

    async def resume(self, vm: str) -> None: ...

    async def kill(self, vm: str) -> None:
        """Terminate the VM (``[resume] policy = "kill"``)."""
        ...

    def volume_of(self, drive: DriveInfo) -> VolumeRef | None:
        """Map a drive to its volume, or None when it is not on a managed volume."""
        ...


class OutcomeKind(enum.Enum):
    OK = "ok"
    FAILED = "failed"      # may succeed if retried (I/O error, timeout, VG full for now)
    REJECTED = "rejected"  # will not succeed if retried as is (bad request, outside pool)


@dataclass(frozen=True)
class ExtendOutcome:
    kind: OutcomeKind
    size: int = 0          # the volume's size afterwards, as seen on this host (refreshed)
    reason: str = ""
    # Machine-readable reason for a failure: "vg_full" (the VG cannot satisfy the request),
    # "timeout", "no_spm", "not_found", "invalid", or "" when nothing more specific is known.
    code: str = ""
    # Durations of the extender's own phases in seconds, e.g. "request" (mailbox round trip),
    # "spm_extend" (lvextend on the SPM), "extend" (local extend), "refresh".
    phases: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.kind is OutcomeKind.OK


class Extender(Protocol):
    """Gets a volume to at least ``size`` bytes and visible at that size on this host.

    Local: the volume backend on this host. Mailbox: a request to the SPM, then a local
    refresh. Returns an outcome rather than raising for expected failures; raises only on
    cancellation.
    """

    async def extend(self, volume: VolumeRef, size: int) -> ExtendOutcome: ...
