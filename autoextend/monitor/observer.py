"""What the monitor reports as it works: one ``notify(event)`` call per thing that happened.

Each event is a small frozen dataclass. Metrics, the demo's live progress and its JSON summary
are all observers: they look at the events they care about (a ``match`` on the event type) and
ignore the rest, so adding an event changes only the observers that want it. ``notify`` is a
plain synchronous function called on the event loop: it must be quick and must not raise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from autoextend.monitor.protocols import DriveInfo, OutcomeKind, PauseReason
from autoextend.volumes import VolumeRef


@dataclass(frozen=True)
class DriveSeen:
    """A managed drive was found or re-read (sizes as QEMU or libvirt reported them)."""

    info: DriveInfo
    volume: VolumeRef
    cap: int


@dataclass(frozen=True)
class DriveGone:
    vm: str
    drive: str
    volume: VolumeRef


@dataclass(frozen=True)
class CleanStop:
    """A guest shut itself down cleanly (never a migration, a crash, a kill or a lost
    connection: ``VmGone.clean``); ``volumes`` are its managed drives' volumes, each once,
    sorted (``[policy] reduce_on_stop`` reduces them)."""

    vm: str
    volumes: tuple[VolumeRef, ...]


@dataclass(frozen=True)
class ExtendFinished:
    """One extension attempt ended. ``kind`` None means capped (nothing to do).

    ``phases`` holds durations in seconds: ``wait`` (event to start), ``extender`` (the whole
    extender call, plus the extender's own phases such as ``request``, ``spm_extend``,
    ``extend``, ``refresh``), ``rearm``, and ``total`` (event to threshold re-armed on the
    larger volume)."""

    vm: str
    drive: str
    volume: VolumeRef
    kind: OutcomeKind | None
    size: int
    phases: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class ExtendsInFlight:
    count: int


@dataclass(frozen=True)
class Paused:
    vm: str
    reason: PauseReason


@dataclass(frozen=True)
class Resumed:
    """``automatic``: autoextend resumed it (after ENOSPC); otherwise somebody else did."""

    vm: str
    automatic: bool


@dataclass(frozen=True)
class ResumeLatency:
    """An ENOSPC pause ended by autoextend's resume: ``seconds`` from the pause being noticed
    to the resume sent (sent with the ``Resumed`` of that resume)."""

    vm: str
    seconds: float


@dataclass(frozen=True)
class DriveAtCap:
    vm: str
    drive: str
    volume: VolumeRef


@dataclass(frozen=True)
class VgFull:
    vm: str
    drive: str
    volume: VolumeRef


@dataclass(frozen=True)
class UnmanagedEnospc:
    """An ENOSPC pause involving drives autoextend does not manage: left paused."""

    vm: str
    drives: tuple[str, ...]


@dataclass(frozen=True)
class BackingStoreFull:
    """An ENOSPC on a drive with room, after autoextend's own resume on the same size and
    threshold: the storage under the volume is full (``monitor/backing.py``). Once per
    drive until the VM has run stably."""

    vm: str
    drive: str
    volume: VolumeRef


@dataclass(frozen=True)
class IoErrorAction:
    """``action`` is ``resume`` or ``kill`` after an I/O-error pause, with its reason."""

    vm: str
    action: str
    reason: str


@dataclass(frozen=True)
class VmCheckFailed:
    """Handling one VM raised; that VM's handling is retried with backoff."""

    vm: str
    error: str


@dataclass(frozen=True)
class JobFailed:
    """A block job ended with an error; ``reason`` is ``nospace`` or ``error``."""

    vm: str
    job_id: str
    kind: str
    reason: str
    error: str


@dataclass(frozen=True)
class JobResumed:
    """autoextend resumed a block job paused for lack of space on its target ``drive``."""

    vm: str
    drive: str
    kind: str
    job_id: str


@dataclass(frozen=True)
class MigrationNoted:
    """A VM's live migration changed state on this host (``monitor/migration.py``):
    ``role`` source or destination, ``phase`` setup, active, completed, failed, cancelled
    (or pending, none), ``state`` what this host now does (migrating-out, incoming,
    departed, none)."""

    vm: str
    role: str
    phase: str
    state: str


@dataclass(frozen=True)
class StaleViewFound:
    """This host's view of a drive's volume was smaller than its metadata size
    (``monitor/views.py``). ``when``: ``start`` (volume prepare had to refresh), ``appear``
    (the check at a VM's appearance), ``audit`` (the continuous audit). ``action``:
    ``refresh`` (the guest had not run: the view was refreshed and its process stopped, to
    be started again on the refreshed view) or ``pause`` (it had: paused, never resumed by
    autoextend); ``shrunk``: the view was LARGER than the metadata (the volume shrank under
    the guest, issue 27): paused, never resumed by autoextend."""

    vm: str
    drive: str
    volume: VolumeRef
    when: str
    view: int
    metadata: int
    action: str


@dataclass(frozen=True)
class Throttled:
    """The write throttle set (or tightened) a drive's write limit to ``bps`` bytes/s
    (``monitor/throttle.py``); ``reason``: ``SPM failover``, ``extension overdue`` or
    ``write rate``."""

    vm: str
    drive: str
    volume: VolumeRef
    bps: int
    reason: str


@dataclass(frozen=True)
class ThrottleLifted:
    """The drive's own limits are back, after ``seconds`` throttled."""

    vm: str
    drive: str
    volume: VolumeRef
    seconds: float


@dataclass(frozen=True)
class WatermarkLeft:
    """An extension landed with this fraction (0..1) of the watermark still free (the
    near-miss figure: 0 is a pause, or as good as one)."""

    vm: str
    drive: str
    volume: VolumeRef
    fraction: float


MonitorEvent = (
    DriveSeen | DriveGone | CleanStop | ExtendFinished | ExtendsInFlight | Paused | Resumed
    | DriveAtCap | VgFull | UnmanagedEnospc | BackingStoreFull | IoErrorAction | VmCheckFailed
    | JobFailed | JobResumed | MigrationNoted | ResumeLatency | StaleViewFound | Throttled
    | ThrottleLifted | WatermarkLeft
)


class MonitorObserver(Protocol):
    def notify(self, event: MonitorEvent) -> None: ...


class NullObserver:
    def notify(self, event: MonitorEvent) -> None:
        pass


@dataclass
class Tally:
    """Counts what happened; used by the demo summary, the benchmarks and tests."""

    extends: int = 0
    failed: int = 0
    pauses: int = 0
    enospc_pauses: int = 0
    resumes: int = 0
    capped: int = 0
    unmanaged: int = 0
    backing_full: int = 0
    io_error_resumes: int = 0
    kills: int = 0
    check_failures: int = 0
    job_failures: int = 0
    job_resumes: int = 0
    migrations: int = 0  # migration state changes noted (MigrationNoted)
    stale_views: int = 0  # StaleViewFound, any ``when``
    stale_view_pauses: int = 0  # of those, the ones that paused the guest
    throttles: int = 0  # Throttled: limits set or tightened
    throttle_lifts: int = 0  # ThrottleLifted
    latencies: list[float] = field(default_factory=list)
    #: ``phases`` of each successful extension, and pause -> resume seconds (ENOSPC).
    phases: list[Mapping[str, float]] = field(default_factory=list)
    resume_latencies: list[float] = field(default_factory=list)

    def notify(self, event: MonitorEvent) -> None:
        match event:
            case ExtendFinished(kind=OutcomeKind.OK, phases=phases):
                self.extends += 1
                self.phases.append(phases)
                if "total" in phases:
                    self.latencies.append(phases["total"])
            case ExtendFinished(kind=None):
                pass
            case ExtendFinished():
                self.failed += 1
            case Paused(reason=reason):
                self.pauses += 1
                if reason is PauseReason.ENOSPC:
                    self.enospc_pauses += 1
            case Resumed(automatic=True):
                self.resumes += 1
            case DriveAtCap():
                self.capped += 1
            case UnmanagedEnospc():
                self.unmanaged += 1
            case BackingStoreFull():
                self.backing_full += 1
            case IoErrorAction(action="resume"):
                self.io_error_resumes += 1
            case IoErrorAction(action="kill"):
                self.kills += 1
            case VmCheckFailed():
                self.check_failures += 1
            case JobFailed():
                self.job_failures += 1
            case JobResumed():
                self.job_resumes += 1
            case MigrationNoted():
                self.migrations += 1
            case ResumeLatency(seconds=seconds):
                self.resume_latencies.append(seconds)
            case StaleViewFound(action=action):
                self.stale_views += 1
                self.stale_view_pauses += action in ("pause", "shrunk")
            case Throttled():
                self.throttles += 1
            case ThrottleLifted():
                self.throttle_lifts += 1


class Fanout:
    """Sends every event to several observers."""

    def __init__(self, *observers: MonitorObserver) -> None:
        self._observers = observers

    def notify(self, event: MonitorEvent) -> None:
        for o in self._observers:
            o.notify(event)
