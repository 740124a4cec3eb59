"""What the monitor reports as it works: a small callback protocol.

Metrics, the demo's live progress and its JSON summary are all observers. Callbacks are plain
synchronous functions called on the event loop: they must be quick and must not raise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from autoextend.monitor.protocols import DriveInfo, OutcomeKind, PauseReason
from autoextend.volumes import VolumeRef


class MonitorObserver(Protocol):
    def drive_seen(self, info: DriveInfo, volume: VolumeRef, cap: int) -> None: ...

    def drive_gone(self, vm: str, drive: str, volume: VolumeRef) -> None: ...

    def extend_finished(
        self,
        vm: str,
        drive: str,
        volume: VolumeRef,
        kind: OutcomeKind | None,
        size: int,
        phases: dict[str, float],
    ) -> None:
        """``kind`` None means capped (nothing to do). ``phases`` holds durations in seconds:
        ``wait`` (event to start), ``extender`` (the whole extender call, plus the extender's
        own phases such as ``request``, ``spm_extend``, ``extend``, ``refresh``), ``rearm``,
        and ``total`` (event to threshold re-armed on the larger volume)."""
        ...

    def extends_in_flight(self, count: int) -> None: ...

    def paused(self, vm: str, reason: PauseReason) -> None: ...

    def resumed(self, vm: str, automatic: bool) -> None: ...

    def drive_at_cap(self, vm: str, drive: str, volume: VolumeRef) -> None: ...

    def vg_full(self, vm: str, drive: str, volume: VolumeRef) -> None: ...

    def unmanaged_enospc(self, vm: str, drives: tuple[str, ...]) -> None:
        """An ENOSPC pause involving drives autoextend does not manage: left paused."""
        ...

    def io_error_action(self, vm: str, action: str, reason: str) -> None:
        """``action`` is ``resume`` or ``kill`` after an I/O-error pause, with its reason."""
        ...

    def vm_check_failed(self, vm: str, error: str) -> None:
        """Handling one VM raised; that VM's handling is retried with backoff."""
        ...


class NullObserver:
    def drive_seen(self, info: DriveInfo, volume: VolumeRef, cap: int) -> None:
        pass

    def drive_gone(self, vm: str, drive: str, volume: VolumeRef) -> None:
        pass

    def extend_finished(
        self,
        vm: str,
        drive: str,
        volume: VolumeRef,
        kind: OutcomeKind | None,
        size: int,
        phases: dict[str, float],
    ) -> None:
        pass

    def extends_in_flight(self, count: int) -> None:
        pass

    def paused(self, vm: str, reason: PauseReason) -> None:
        pass

    def resumed(self, vm: str, automatic: bool) -> None:
        pass

    def drive_at_cap(self, vm: str, drive: str, volume: VolumeRef) -> None:
        pass

    def vg_full(self, vm: str, drive: str, volume: VolumeRef) -> None:
        pass

    def unmanaged_enospc(self, vm: str, drives: tuple[str, ...]) -> None:
        pass

    def io_error_action(self, vm: str, action: str, reason: str) -> None:
        pass

    def vm_check_failed(self, vm: str, error: str) -> None:
        pass


@dataclass
class Tally(NullObserver):
    """Counts what happened; used by the demo summary, the benchmarks and tests."""

    extends: int = 0
    failed: int = 0
    pauses: int = 0
    enospc_pauses: int = 0
    resumes: int = 0
    capped: int = 0
    unmanaged: int = 0
    io_error_resumes: int = 0
    kills: int = 0
    check_failures: int = 0
    latencies: list[float] = field(default_factory=list)

    def extend_finished(
        self,
        vm: str,
        drive: str,
        volume: VolumeRef,
        kind: OutcomeKind | None,
        size: int,
        phases: dict[str, float],
    ) -> None:
        if kind is OutcomeKind.OK:
            self.extends += 1
            if "total" in phases:
                self.latencies.append(phases["total"])
        elif kind is not None:
            self.failed += 1

    def paused(self, vm: str, reason: PauseReason) -> None:
        self.pauses += 1
        if reason is PauseReason.ENOSPC:
            self.enospc_pauses += 1

    def resumed(self, vm: str, automatic: bool) -> None:
        if automatic:
            self.resumes += 1

    def drive_at_cap(self, vm: str, drive: str, volume: VolumeRef) -> None:
        self.capped += 1

    def unmanaged_enospc(self, vm: str, drives: tuple[str, ...]) -> None:
        self.unmanaged += 1

    def io_error_action(self, vm: str, action: str, reason: str) -> None:
        if action == "resume":
            self.io_error_resumes += 1
        elif action == "kill":
            self.kills += 1

    def vm_check_failed(self, vm: str, error: str) -> None:
        self.check_failures += 1


class Fanout(NullObserver):
    """Sends every callback to several observers."""

    def __init__(self, *observers: MonitorObserver) -> None:
        self._observers = observers

    def drive_seen(self, info: DriveInfo, volume: VolumeRef, cap: int) -> None:
        for o in self._observers:
            o.drive_seen(info, volume, cap)

    def drive_gone(self, vm: str, drive: str, volume: VolumeRef) -> None:
        for o in self._observers:
            o.drive_gone(vm, drive, volume)

    def extend_finished(
        self,
        vm: str,
        drive: str,
        volume: VolumeRef,
        kind: OutcomeKind | None,
        size: int,
        phases: dict[str, float],
    ) -> None:
        for o in self._observers:
            o.extend_finished(vm, drive, volume, kind, size, phases)

    def extends_in_flight(self, count: int) -> None:
        for o in self._observers:
            o.extends_in_flight(count)

    def paused(self, vm: str, reason: PauseReason) -> None:
        for o in self._observers:
            o.paused(vm, reason)

    def resumed(self, vm: str, automatic: bool) -> None:
        for o in self._observers:
            o.resumed(vm, automatic)

    def drive_at_cap(self, vm: str, drive: str, volume: VolumeRef) -> None:
        for o in self._observers:
            o.drive_at_cap(vm, drive, volume)

    def vg_full(self, vm: str, drive: str, volume: VolumeRef) -> None:
        for o in self._observers:
            o.vg_full(vm, drive, volume)

    def unmanaged_enospc(self, vm: str, drives: tuple[str, ...]) -> None:
        for o in self._observers:
            o.unmanaged_enospc(vm, drives)

    def io_error_action(self, vm: str, action: str, reason: str) -> None:
        for o in self._observers:
            o.io_error_action(vm, action, reason)

    def vm_check_failed(self, vm: str, error: str) -> None:
        for o in self._observers:
            o.vm_check_failed(vm, error)
