"""What the monitor keeps per VM, the messages its task handles, and what every part shares.

The monitor is split along its seams, one module each, stacked as one class::

    MonitorBase (here)   dependencies, per-VM record, in-flight count, cap handling
    └── Extensions       the extension task of one drive (monitor/extension.py)
        └── Resync       one resync path for connect, poll and events; resume and kill
            └── Monitor  lifecycle, routing, the VM tasks (monitor/core.py)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from autoextend.clock import Clock
from autoextend.logs import get_logger
from autoextend.monitor import jobpolicy, overrides, policy
from autoextend.monitor.config import PolicySettings, ResumeSettings
from autoextend.monitor.drive import DriveState
from autoextend.monitor.observer import DriveAtCap, ExtendsInFlight, MonitorObserver
from autoextend.monitor.probe import StorageProbe
from autoextend.monitor.protocols import DriveInfo, Extender, Hypervisor, HypervisorEvent
from autoextend.monitor.vmstate import VmMachine
from autoextend.volumes import VolumeRef

log = get_logger("monitor")

PolicyResolver = Callable[[DriveInfo, VolumeRef], policy.DrivePolicy]


@runtime_checkable
class SamplesAfterExtend(Protocol):
    """Optional on a :data:`PolicyResolver`: one whose policy follows what it measures (the
    write-rate chunks, ``monitor/chunking.py``). While ``sample_after_extend`` is true the
    monitor samples the drive once more right after each extension and asks again."""

    sample_after_extend: bool

    def __call__(self, info: DriveInfo, volume: VolumeRef) -> policy.DrivePolicy: ...


LeaseOk = Callable[[], bool]
# (volume, paused on ENOSPC) -> None to go ahead, or why the extension must wait
# (a VG at its critical level extends only drives whose VM paused on ENOSPC).
SpaceGate = Callable[[VolumeRef, bool], str | None]

VM_INBOX_SIZE = 64


class ResyncRequest:
    """Re-read everything about the VM (connect, hot-plug, pause/resume, dropped event)."""


class Poll:
    """Periodic safety-net check (or a timer: a resume or a retry is due)."""


RESYNC = ResyncRequest()
POLL = Poll()
VmMessage = HypervisorEvent | ResyncRequest | Poll


def default_policy_resolver(settings: PolicySettings) -> PolicyResolver:
    """Config defaults plus ``[[policy.overrides]]``."""
    return lambda info, volume: overrides.resolve(settings, info, volume)


@dataclass
class Vm:
    """One VM: its inbox, its drives (each its own state machine) and its pause machine."""

    name: str
    inbox: MemoryObjectSendStream[VmMessage]
    receive: MemoryObjectReceiveStream[VmMessage]
    machine: VmMachine = field(default_factory=VmMachine)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    drives: dict[str, DriveState] = field(default_factory=dict)
    resync_pending: bool = False
    failures: int = 0           # handling failed this many times in a row
    retry_at: float = 0.0       # after a failure: not before this time
    timer_at: float | None = None  # a wake-up is scheduled for this time
    tg: TaskGroup | None = None

    def post(self, message: VmMessage) -> None:
        """Queue without blocking; a full inbox degrades to one pending resync."""
        try:
            self.inbox.send_nowait(message)
        except anyio.WouldBlock:
            self.resync_pending = True
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass


class MonitorBase:
    """The dependencies every part of the monitor uses (all replaceable on reload)."""

    def __init__(
        self,
        hypervisor: Hypervisor,
        extender: Extender,
        settings: PolicySettings,
        clock: Clock,
        *,
        policy_for: PolicyResolver | None,
        observer: MonitorObserver,
        dry_run: bool,
        resume: ResumeSettings,
        probe: StorageProbe,
        lease_ok: LeaseOk | None,
        extend_deadline_s: float | None,
    ) -> None:
        self.hypervisor = hypervisor
        self.extender = extender
        self.settings = settings
        self.clock = clock
        self.policy_for = policy_for or default_policy_resolver(settings)
        self.observer = observer
        self.dry_run = dry_run
        self.resume_settings = resume
        self.probe = probe
        self.lease_ok = lease_ok
        self._extend_deadline_s = extend_deadline_s
        self._vms: dict[str, Vm] = {}
        self._job_resumed_at: dict[tuple[str, str], float] = {}  # (vm, job id) -> last resume
        self._in_flight = 0
        self.space_gate: SpaceGate | None = None  # set by the service (capacity levels)
        # Called with the VM and its volumes when a guest shut down cleanly (reduce_on_stop).
        self.on_clean_stop: Callable[[str, list[VolumeRef]], object] | None = None

    @property
    def extend_deadline_s(self) -> float:
        """How long one extension may take before it counts as failed (see timeouts.py)."""
        if self._extend_deadline_s is not None:
            return self._extend_deadline_s
        return self.settings.extend_timeout_s

    @property
    def extends_in_flight(self) -> int:
        return self._in_flight

    def _count_in_flight(self, delta: int) -> None:
        self._in_flight += delta
        self.observer.notify(ExtendsInFlight(self._in_flight))

    def _job_need(self, info: DriveInfo, pol: policy.DrivePolicy) -> int:
        """The size a job target should reach before its job writes (0: no pre-extension)."""
        return jobpolicy.need_size(info, pol) if self.settings.job_pre_extend else 0

    def _job_short(self, info: DriveInfo, pol: policy.DrivePolicy) -> bool:
        return self._job_need(info, pol) > info.physical

    def _disable(self, vm: Vm, d: DriveState) -> None:
        d.reached_cap()
        self.observer.notify(DriveAtCap(vm.name, d.name, d.volume))
        log.warning("drive reached its cap; no further extension", vm=vm.name, drive=d.name,
                    volume=str(d.volume), physical=d.info.physical, cap=d.cap)

    def _wake_at(self, vm: Vm, when: float) -> None:
        """Make the VM's task look again at ``when`` (one timer per VM, the earliest wins)."""
        if vm.tg is None or (vm.timer_at is not None and vm.timer_at <= when):
            return
        vm.timer_at = when

        async def timer() -> None:
            await self.clock.sleep(max(0.0, when - self.clock.now()))
            if vm.timer_at == when:
                vm.timer_at = None
                vm.post(POLL)

        vm.tg.start_soon(timer, name=f"timer:{vm.name}")
