"""The monitor's two boundaries: the hypervisor below it and the extender beside it.

Hypervisor backends (``qmp/``, ``libvirt_backend/``) translate their native events into the
small dataclasses here and push them into a bounded stream the monitor owns. They answer
queries with :class:`DriveInfo`. Nothing here knows about mailboxes or LVM commands.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectSendStream

from autoextend.errors import HypervisorError
from autoextend.monitor.migration import MigrationInfo
from autoextend.volumes import VolumeRef


@dataclass(frozen=True)
class DriveInfo:
    """One writable qcow2 drive on a block device, as the hypervisor sees it now.

    ``drive`` is the stable name the monitor keys state by (QMP: the qdev id such as
    ``vda``; libvirt: the indexed target such as ``vda[1]``). ``node`` is what the backend
    arms the threshold on (QMP: the protocol node name; libvirt: the indexed target).
    ``allocation`` is the highest written physical offset, ``physical`` the device size,
    ``capacity`` the guest-visible virtual size. ``threshold`` is 0 when none is armed.

    A block job's target (a commit base, a mirror target, a backup scratch node) is a drive
    too (``monitor/jobs.py``): ``job`` names the job's kind (``commit``, ``mirror``,
    ``backup``; empty for a guest's own drive), ``job_id`` the job, ``job_paused`` says the
    job stopped for lack of space (``on-error=enospc``) and waits for ``resume_job``, and
    ``job_need`` is the size the target should have for the job to finish (a commit base
    measured at the job's start; 0 when unknown).

    ``error_policy`` is the drive's write error policy (QEMU's ``werror``) as the hypervisor
    says: ``stop``, ``enospc``, ``report`` or ``ignore``; "" when unset or not known (QEMU's
    default is ``enospc``: the VM pauses). With ``report`` or ``ignore``
    (:data:`ENOSPC_TO_GUEST`) an ENOSPC is handed to the guest as an I/O error instead: the
    write is lost and ext4 remounts read-only.
    """

    vm: str
    drive: str
    node: str
    path: str
    capacity: int
    allocation: int
    physical: int
    threshold: int = 0
    job: str = ""
    job_id: str = ""
    job_paused: bool = False
    job_need: int = 0
    error_policy: str = ""
    # The qcow2's cluster size (0: not reported) and its persistent dirty bitmaps as
    # (name, granularity): what the honest cap needs (``monitor/policy.py``).
    cluster_size: int = 0
    bitmaps: tuple[tuple[str, int], ...] = ()


# Write error policies that hand an ENOSPC to the guest instead of pausing the VM.
ENOSPC_TO_GUEST = frozenset({"report", "ignore"})


class PauseReason(enum.Enum):
    ENOSPC = "enospc"          # paused by werror=enospc: autoextend may resume it
    IO_ERROR = "io-error"      # paused by another I/O error: never resumed by us
    USER = "user"              # paused by an operator
    MIGRATION = "migration"
    OTHER = "other"


@dataclass(frozen=True)
class DriveIoError:
    """A drive the hypervisor reports in I/O error while the VM is paused, managed or not.

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
    errors: tuple[DriveIoError, ...] = ()
    # The guest has not run since its process started: QEMU ``-S`` before the first ``cont``
    # (QMP status ``prelaunch``), a libvirt domain paused while starting up. Nothing has
    # been read through its views yet (``monitor/viewcheck.py``).
    prelaunch: bool = False


#: A drive's I/O limit fields, by QMP's names (``block_set_io_throttle``, ``query-block``'s
#: ``inserted``); libvirt's ``blockIoTune`` names map onto them one to one. 0 is "no limit".
IO_LIMIT_FIELDS = (
    "bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr",
    "bps_max", "bps_rd_max", "bps_wr_max", "iops_max", "iops_rd_max", "iops_wr_max",
    "bps_max_length", "bps_rd_max_length", "bps_wr_max_length",
    "iops_max_length", "iops_rd_max_length", "iops_wr_max_length", "iops_size",
)


@dataclass(frozen=True)
class IoLimits:
    """A drive's I/O limits as the hypervisor has them now (``monitor/throttle.py``).

    ``values`` holds every field of :data:`IO_LIMIT_FIELDS` that is not 0, sorted by name;
    ``group`` is the throttle group the drive is in ("" for none). Read them before
    changing them, and give them back unchanged to restore them exactly.
    """

    values: tuple[tuple[str, int], ...] = ()
    group: str = ""

    @classmethod
    def of(cls, fields: dict[str, int], group: str = "") -> IoLimits:
        """From a field -> value map (unknown fields are an error; zeros are dropped)."""
        unknown = set(fields) - set(IO_LIMIT_FIELDS)
        if unknown:
            raise ValueError(f"unknown I/O limit fields: {sorted(unknown)}")
        if any(v < 0 for v in fields.values()):
            raise ValueError("I/O limits must be >= 0")
        return cls(tuple(sorted((k, v) for k, v in fields.items() if v)), group)

    def get(self, name: str) -> int:
        return dict(self.values).get(name, 0)

    def matches(self, ours: IoLimits) -> bool:
        """These limits (read now) are ``ours``, as autoextend recorded them. A record of
        limits sent and not read back (``Throttles._record``) names no group where the
        hypervisor names one (QEMU names a new throttle group after the device): then the
        values alone decide."""
        if self == ours:
            return True
        return not ours.group and not ours.unlimited and self.values == ours.values

    @property
    def unlimited(self) -> bool:
        return not self.values

    @property
    def write_bps(self) -> int:
        """The write bandwidth these limits allow (bytes/s; 0: none set): the lower of the
        total and the write limit."""
        set_ = [v for v in (self.get("bps"), self.get("bps_wr")) if v]
        return min(set_) if set_ else 0

    def with_write_bps(self, bps: int) -> IoLimits:
        """These limits with the write bandwidth lowered to ``bps`` (never raised). QEMU
        refuses a total (``bps``) beside a write limit, so a drive that has a total gets
        its total lowered (reads share it); the burst allowance of the field lowered is
        dropped, since it would let the guest write past it."""
        if bps <= 0:
            raise ValueError("a write limit must be > 0")
        fields = dict(self.values)
        name = "bps" if fields.get("bps") else "bps_wr"
        current = fields.get(name, 0)
        fields[name] = min(current, bps) if current else bps
        for burst in (f"{name}_max", f"{name}_max_length"):
            fields.pop(burst, None)
        return IoLimits.of(fields, self.group)


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
class EnospcPause:
    """A write on this drive failed with ENOSPC, which pauses the guest (``werror=enospc``;
    ``drive`` may be empty if unknown). An event, not an exception: nothing raises it."""

    vm: str
    drive: str


@dataclass(frozen=True)
class VmPaused:
    """The VM paused. ``state``: the run state the backend read for this event, when it read
    one (QMP reads it on ``STOP``): the VM's task takes it in without reading it again."""

    vm: str
    reason: PauseReason
    state: RunState | None = field(default=None, compare=False)


@dataclass(frozen=True)
class VmResumed:
    vm: str


@dataclass(frozen=True)
class JobEnded:
    """A block job ended (completed, failed or cancelled). ``error`` is QEMU's or libvirt's
    message when it failed, ``nospace`` when it failed for lack of space."""

    vm: str
    job_id: str
    kind: str
    error: str = ""
    nospace: bool = False


@dataclass(frozen=True)
class MigrationChanged:
    """A migration of the VM started, progressed or ended (either direction): ask the
    hypervisor for the VM's migration role and phase (``monitor/migration.py``)."""

    vm: str


HypervisorEvent = (
    VmAppeared | VmGone | DrivesChanged | ThresholdCrossed | EnospcPause | VmPaused | VmResumed
    | JobEnded
    | MigrationChanged
)


# Neutral errors: what every hypervisor backend raises (or subclasses), fakes included.


class VmNotFound(HypervisorError):
    """The hypervisor has no such VM now: never seen, gone, shut off, or not connected.

    Backends subclass it (``qmp.errors.VmNotFound``, ``libvirt_backend.errors.VmNotFound``)
    to add what they know (the command or call); ``vm`` names the VM.
    """

    def __init__(self, vm: str, detail: str = "no such VM") -> None:
        self.vm = vm
        super().__init__(f"{vm}: {detail}")


class MigrationRunning(HypervisorError):
    """A resume refused by the backend: an outgoing migration of the VM is active (a VM
    migrating out is never resumed on its source, ``monitor/migration.py``). ``status`` is
    the hypervisor's word for the migration's state."""

    def __init__(self, vm: str, status: str) -> None:
        self.vm = vm
        self.status = status
        super().__init__(f"{vm}: not resumed: a migration out of this host is {status}")


class HypervisorDisconnected(HypervisorError):
    """The backend has no usable connection right now (QMP socket or libvirtd lost); the
    call may succeed after a reconnect."""


@dataclass(frozen=True)
class HypervisorHealth:
    """What a backend counts at its edge, for metrics and ``status``.

    ``session_failures``: VM sessions or calls ended by a bad reply or an unexpected error;
    ``malformed_events``: events dropped because their data failed validation; ``problem``:
    why nothing can be watched right now (no socket matches, libvirtd unreachable), or None;
    ``unidentified``: VMs found but not identified (a QMP socket that does not answer): a
    VM the backend reports as not found may be one of them.
    """

    session_failures: int = 0
    malformed_events: int = 0
    problem: str | None = None
    unidentified: int = 0


class Hypervisor(Protocol):
    """A source of drive events and the calls the monitor makes back.

    All methods raise :class:`~autoextend.errors.HypervisorError` (or a subclass) on failure;
    :class:`VmNotFound` (or a subclass) when the VM is not there, and
    :class:`HypervisorDisconnected` (or a subclass) when the backend has no connection.
    Every implementation passes ``tests/conformance/test_hypervisor.py``.
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

    async def resume(self, vm: str) -> None:
        """Let the guest run. Raises :class:`MigrationRunning` when a backend that can see it
        finds an outgoing migration active (QMP asks ``query-migrate`` right before ``cont``;
        libvirt's own job lock refuses a resume during a migration)."""
        ...

    async def kill(self, vm: str) -> None:
        """Terminate the VM (``[resume] policy = "kill"``)."""
        ...

    async def suspend(self, vm: str) -> None:
        """Pause the guest (QMP ``stop``, libvirt ``suspend``): a guest found running on a
        stale view of its volume (``monitor/views.py``). Pausing a paused guest is no error."""
        ...

    def volume_of(self, drive: DriveInfo) -> VolumeRef | None:
        """Map a drive to its volume, or None when it is not on a managed volume."""
        ...

    async def migration(self, vm: str) -> MigrationInfo:
        """The VM's migration role and phase now (``monitor/migration.py``); every backend
        can tell (QMP ``query-migrate``, libvirt's job info)."""
        ...

    async def outgoing_migration(self, vm: str) -> bool:
        """Whether an outgoing migration of the VM may have started, as cheaply as the
        backend can tell; asked right before an extension refreshes this host's view
        (``monitor/migrating.py``). QMP: from the ``MIGRATION`` events already read (no
        command while QEMU sends them and none says a migration runs; else
        ``migration()``); libvirt: one ``jobStats``. True when in doubt."""
        ...

    def health(self) -> HypervisorHealth:
        """What the backend counts at its edge and why nothing can be watched now, if so
        (:class:`HypervisorHealth`; all zeros and no problem when healthy). No I/O."""
        ...

    async def io_limits(self, vm: str, drive: DriveInfo) -> IoLimits:
        """The guest drive's I/O limits now (QMP ``query-block``'s ``inserted``, libvirt
        ``blockIoTune``): what the write throttle reads before it sets one."""
        ...

    async def set_io_limits(self, vm: str, drive: DriveInfo, limits: IoLimits) -> None:
        """Set every I/O limit of the guest drive to ``limits`` (fields not in it to 0):
        QMP ``block_set_io_throttle``, libvirt ``setBlockIoTune`` (live)."""
        ...


@runtime_checkable
class JobControl(Protocol):
    """What a backend that reports block-job targets can do about the jobs (optional: the
    monitor checks ``isinstance(hypervisor, JobControl)``)."""

    async def resume_job(self, vm: str, job_id: str) -> None:
        """Resume a job paused for lack of space (QMP ``job-resume``)."""
        ...


class OutcomeKind(enum.Enum):
    OK = "ok"
    FAILED = "failed"      # may succeed if retried (I/O error, timeout, VG full for now)
    REJECTED = "rejected"  # will not succeed if retried as is (bad request, outside pool)


class OutcomeCode(enum.Enum):
    """Why an extension did not succeed, as far as the extender knows (machine-readable)."""

    NONE = ""               # nothing more specific is known
    VG_FULL = "vg_full"     # the VG cannot satisfy the request
    TIMEOUT = "timeout"     # no answer in time
    NO_SPM = "no_spm"       # no SPM serves the pool
    NOT_FOUND = "not_found"  # no such volume
    INVALID = "invalid"     # the request was refused as malformed or out of the pool


@dataclass(frozen=True)
class ExtendOutcome:
    kind: OutcomeKind
    size: int = 0          # the volume's size afterwards, as seen on this host (refreshed)
    reason: str = ""
    code: OutcomeCode = OutcomeCode.NONE  # machine-readable reason for a failure
    # Durations of the extender's own phases in seconds, e.g. "request" (mailbox round trip),
    # "spm_extend" (lvextend on the SPM), "extend" (local extend), "refresh".
    phases: dict[str, float] = field(default_factory=dict)
    # False for ``extend(..., refresh=False)``: ``size`` is then the size in metadata, and
    # this host's view was left as it was (a VM migrating out, see monitor/migration.py).
    refreshed: bool = True

    @property
    def ok(self) -> bool:
        return self.kind is OutcomeKind.OK


#: Asked right before an extender refreshes this host's view: may it still? (False: a
#: migration out began while the request was in flight, see ``Extender``.)
RefreshGate = Callable[[], Awaitable[bool]]


class Extender(Protocol):
    """Gets a volume to at least ``size`` bytes and visible at that size on this host.

    Local: the volume backend on this host. Mailbox: a request to the SPM, then a local
    refresh. Returns an outcome rather than raising for expected failures; raises only on
    cancellation.

    ``refresh=False`` (passed only while the VM migrates out of this host): get the volume
    to ``size`` in metadata but leave this host's view as it is; the outcome has
    ``refreshed=False`` and the size in metadata.

    ``may_refresh``: asked right before this host's view would be refreshed. A request
    through the SPM can take seconds (a failover: minutes), and a migration out can begin
    meanwhile; False then leaves the view as with ``refresh=False``. An extender whose
    extend and refresh are one short local step may ignore it (the monitor asked just
    before the call).
    """

    async def extend(
        self, volume: VolumeRef, size: int, *, refresh: bool = True,
        may_refresh: RefreshGate | None = None,
    ) -> ExtendOutcome: ...
