"""One drive's threshold state machine. This class is the only owner of a drive's state.

States::

    UNSET ──arm──▶ SET ──crossed/needs──▶ EXCEEDED ──start──▶ EXTENDING ──done──▶ SET
      ▲                                       ▲                  │  │
      │                                       └──failed (retry)──┘  └──at cap──▶ DISABLED
      └──────────────── resync (reconnect, path change) ──────────────────────────────┘

* UNSET: no threshold armed (new drive, after reconnect, or arming failed).
* SET: threshold armed at ``threshold``.
* EXCEEDED: the guest crossed the threshold (or ran out of space); an extension is due, or
  is waiting for its retry time after a failure (``last_error`` / ``attempts`` say so).
* EXTENDING: one extension is in flight; further events for this drive are absorbed.
* DISABLED: the volume is at its cap; nothing more to do until a resync sees it grow.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from autoextend.monitor.protocols import DriveInfo
from autoextend.volumes import VolumeRef


class ThresholdState(enum.Enum):
    UNSET = "unset"
    SET = "set"
    EXCEEDED = "exceeded"
    EXTENDING = "extending"
    DISABLED = "disabled"


class IllegalTransition(RuntimeError):
    """A programming error: a transition the state machine does not allow."""


_ALLOWED: dict[ThresholdState, frozenset[ThresholdState]] = {
    ThresholdState.UNSET: frozenset(
        {ThresholdState.SET, ThresholdState.EXCEEDED, ThresholdState.DISABLED}
    ),
    ThresholdState.SET: frozenset(
        {ThresholdState.EXCEEDED, ThresholdState.UNSET, ThresholdState.SET, ThresholdState.DISABLED}
    ),
    ThresholdState.EXCEEDED: frozenset(
        {ThresholdState.EXTENDING, ThresholdState.UNSET, ThresholdState.DISABLED}
    ),
    ThresholdState.EXTENDING: frozenset(
        {ThresholdState.SET, ThresholdState.EXCEEDED, ThresholdState.DISABLED}
    ),
    ThresholdState.DISABLED: frozenset({ThresholdState.UNSET, ThresholdState.EXCEEDED}),
}


@dataclass
class DriveState:
    """What the monitor knows about one drive. Mutated only through the methods below."""

    info: DriveInfo
    volume: VolumeRef
    cap: int
    state: ThresholdState = ThresholdState.UNSET
    threshold: int = 0
    exceeded_at: float | None = None
    enospc: bool = False
    attempts: int = 0
    last_error: str = ""
    retry_at: float = 0.0
    extends: int = 0
    #: The threshold last armed, kept when a re-arm clears ``threshold`` (a re-arm that
    #: failed leaves the hypervisor's threshold in place: its event is still ours).
    last_armed: int = 0

    @property
    def name(self) -> str:
        return self.info.drive

    @property
    def in_flight(self) -> bool:
        return self.state is ThresholdState.EXTENDING

    def _go(self, new: ThresholdState) -> None:
        if new not in _ALLOWED[self.state]:
            raise IllegalTransition(f"{self.name}: {self.state.value} -> {new.value}")
        self.state = new

    def update_info(self, info: DriveInfo, *, cap: int | None = None) -> None:
        """Fresh numbers from the hypervisor (and the cap they give, when recomputed)."""
        self.info = info
        if cap is not None:
            self.cap = cap

    def mark_enospc_at_cap(self) -> None:
        """ENOSPC on a drive that cannot grow: remember it (the VM must stay paused)."""
        self.enospc = True

    def armed(self, threshold: int) -> None:
        self._go(ThresholdState.SET)
        self.threshold = self.last_armed = threshold

    def ours(self, threshold: int) -> bool:
        """A crossing of ``threshold`` is of the threshold this drive armed last (set now,
        or cleared for a re-arm that has not succeeded): its event's numbers can be used."""
        if threshold <= 0:
            return False
        if self.state is ThresholdState.SET:
            return self.threshold == threshold
        return self.state is ThresholdState.UNSET and self.last_armed == threshold

    def disarmed(self) -> None:
        """Arming failed, or the hypervisor may have lost the threshold (reconnect)."""
        if self.state in (ThresholdState.SET, ThresholdState.DISABLED):
            self._go(ThresholdState.UNSET)
        self.threshold = 0

    def mark_exceeded(self, now: float, *, enospc: bool = False) -> bool:
        """Record a crossing or ENOSPC. Returns True if this is news (not a duplicate)."""
        if enospc:
            self.enospc = True
        if self.state in (ThresholdState.EXCEEDED, ThresholdState.EXTENDING):
            return False
        self._go(ThresholdState.EXCEEDED)
        self.exceeded_at = now
        self.threshold = 0  # QEMU disarms a threshold when it fires
        return True

    def start_extend(self) -> None:
        self._go(ThresholdState.EXTENDING)

    def extend_failed(self, now: float, reason: str, delay: float) -> None:
        self._go(ThresholdState.EXCEEDED)
        self.attempts += 1
        self.last_error = reason
        self.retry_at = now + delay

    def retry_now(self, now: float) -> bool:
        """A failed extension may be retried at once (its VG gained space). Returns True
        when the drive was waiting for a retry."""
        if self.state is not ThresholdState.EXCEEDED or self.retry_at <= now:
            return False
        self.retry_at = now
        return True

    def extend_done(self, threshold: int) -> None:
        self._go(ThresholdState.SET)
        self.threshold = threshold
        self.enospc = False
        self.attempts = 0
        self.last_error = ""
        self.retry_at = 0.0
        self.exceeded_at = None
        self.extends += 1

    def not_needed(self, threshold: int) -> None:
        """The extension turned out unnecessary (stale event, or another extend got there
        first): back to SET with a fresh threshold, without counting an extension."""
        self._go(ThresholdState.SET)
        self.threshold = threshold
        self.exceeded_at = None

    def reached_cap(self) -> None:
        self._go(ThresholdState.DISABLED)
        self.threshold = 0
        self.exceeded_at = None

    def snapshot(self) -> dict[str, object]:
        return {
            "drive": self.name,
            "volume": str(self.volume),
            "path": self.info.path,
            "state": self.state.value,
            "allocation": self.info.allocation,
            "physical": self.info.physical,
            "capacity": self.info.capacity,
            "cap": self.cap,
            "threshold": self.threshold,
            "enospc": self.enospc,
            "extends": self.extends,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "job": self.info.job,
            "job_id": self.info.job_id,
            "error_policy": self.info.error_policy,
        }
