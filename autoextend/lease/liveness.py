"""Liveness of other hosts from their delta lease records, timed on our monotonic clock.

Pure state, fed with each read of the delta area. A host is LIVE when its record's bytes
changed while we watched. It is DEAD only when a read *issued* at least host_dead after the
completion of the read that first showed its current bytes still shows the same bytes: then
its holder fenced itself before (see README, "Timing argument"). Raw bytes are compared, so
an unreadable (torn, garbage) record still ages toward DEAD, and a host we have just started
watching stays UNKNOWN (never DEAD) until host_dead has passed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from autoextend.lease.errors import RecordError
from autoextend.lease.format import DeltaRecord, unpack_delta


class HostState(enum.Enum):
    FREE = "free"        # the slot is released (timestamp 0)
    UNKNOWN = "unknown"  # no change seen yet, and not silent for host_fail
    LIVE = "live"        # changed within host_fail
    FAIL = "fail"        # silent for host_fail (8T)
    DEAD = "dead"        # silent for host_dead (8T+W), confirmed by a read issued after it
    BAD = "bad"          # unreadable record (counted), not yet silent for host_fail


@dataclass
class PeerView:
    raw: bytes
    record: DeltaRecord | None
    first_seen: float     # completion time of our first read of this slot
    last_change: float    # completion time of the read that first showed ``raw``
    changed: bool         # raw changed at least once while we watched
    confirmed_at: float   # issue time of the latest read that still showed ``raw``


@dataclass(frozen=True)
class HostStatus:
    host_id: int
    state: HostState
    host_name: str
    generation: int
    silent_s: float       # seconds since the record last changed (our clock)


class HostMonitor:
    """Tracks every slot's record across reads."""

    def __init__(self, host_fail: float, host_dead: float) -> None:
        self.host_fail = host_fail
        self.host_dead = host_dead
        self.peers: dict[int, PeerView] = {}
        self.bad_records = 0
        self.area_seen: float | None = None  # completion of the last read of every slot

    def observe(self, host_id: int, raw: bytes, offset: int, issued: float, done: float) -> None:
        record: DeltaRecord | None
        try:
            record = unpack_delta(raw, offset, host_id)
        except RecordError:
            record = None
            if any(raw):
                self.bad_records += 1
        view = self.peers.get(host_id)
        if view is None:
            self.peers[host_id] = PeerView(raw, record, done, done, False, issued)
        elif view.raw != raw:
            view.raw, view.record, view.last_change, view.changed = raw, record, done, True
            view.confirmed_at = issued
        else:
            view.confirmed_at = max(view.confirmed_at, issued)

    def _dead_after(self, view: PeerView) -> float:
        if view.record is not None:
            return max(self.host_dead, self.host_dead + 8 * (view.record.io_timeout_ms / 1000.0)
                       - self.host_fail)
        return self.host_dead

    def is_dead(self, host_id: int) -> bool:
        """Silent for host_dead, proven by a read issued after that time."""
        view = self.peers.get(host_id)
        if view is None:
            return False
        return view.confirmed_at - view.last_change >= self._dead_after(view)

    def needs_confirm(self, host_id: int, now: float) -> bool:
        """host_dead has passed since the last change but no read proves it yet."""
        view = self.peers.get(host_id)
        if view is None or self.is_dead(host_id):
            return False
        return now - view.last_change >= self._dead_after(view)

    def record(self, host_id: int) -> DeltaRecord | None:
        view = self.peers.get(host_id)
        return view.record if view is not None else None

    def status(self, host_id: int, now: float) -> HostStatus:
        view = self.peers[host_id]
        silent = now - view.last_change
        rec = view.record
        if rec is not None and rec.free:
            state = HostState.FREE
        elif self.is_dead(host_id):
            state = HostState.DEAD
        elif silent >= self.host_fail:
            state = HostState.FAIL
        elif rec is None:
            state = HostState.BAD
        elif view.changed:
            state = HostState.LIVE
        else:
            state = HostState.UNKNOWN
        return HostStatus(
            host_id, state, rec.host_name if rec else "", rec.generation if rec else 0, silent
        )
